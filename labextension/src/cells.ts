/**
 * "Insert fine-tune cell" and "Insert export and compare cell": working templates below the active cell.
 *
 * The fine-tune template is the reference job of `make demo` (a Python test checks that they stay equal). If the
 * notebook never loads slmnb, a `%load_ext slmnb` cell goes in first, so the inserted cell runs as it is.
 */
import { NotebookActions, NotebookPanel } from '@jupyterlab/notebook';

import templates from './templates.json';

export type Template = 'finetune' | 'exportCompare';

/**
 * Insert a template below the active cell and select it. `run` names the run an export cell acts on; without one
 * the cell uses `{run.name}`, which IPython expands to the run the fine-tune template stored in `run`.
 */
export function insertTemplate(panel: NotebookPanel, template: Template, run?: string): void {
  const notebook = panel.content;
  const loaded = panel.model?.sharedModel.cells.some(
    cell => cell.cell_type === 'code' && /^%load_ext\s+slmnb\b/m.test(cell.getSource())
  );
  const sources = loaded ? [] : [templates.loadExtension.join('\n')];
  sources.push(templates[template].join('\n').replace('{RUN}', run ?? '{run.name}'));
  for (const source of sources) {
    NotebookActions.insertBelow(notebook);
    const cell = notebook.activeCell;
    if (cell) {
      NotebookActions.changeCellType(notebook, 'code');
      cell.model.sharedModel.setSource(source);
    }
  }
  notebook.activeCell?.node.scrollIntoView({ block: 'nearest' });
}
