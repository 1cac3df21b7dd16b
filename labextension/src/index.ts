/**
 * slmnb in JupyterLab. Everything here reads the notebook and the runs folder; training, export and comparison
 * stay in the kernel, so the Python package works the same without this extension (Notebook 7, VS Code, Colab).
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget } from '@jupyterlab/apputils';
import {
  EditorExtensionRegistry,
  IEditorExtensionRegistry,
  IEditorLanguageRegistry
} from '@jupyterlab/codemirror';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { LanguageSupport } from '@codemirror/language';

import { insertTemplate, Template } from './cells';
import { insertFormCells } from './formcell';
import { fitPlotlyCharts } from './plotfit';
import { magicExtension } from './highlight';
import { RunsPanel } from './panel';
import { IRunState, RunsModel, SAVED_STATUSES, dirname, isLive, joinPath } from './runs';
import { RunView } from './runview';
import { RunStatus } from './statusbar';

const runsIcon = new LabIcon({
  name: 'slmnb:runs',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><path class="jp-icon3" fill="#616161" ' +
    'd="M3 3h2v16h16v2H3zm4 12 4-5 3 3 5-7 1.6 1.2-6.4 9-3-3-2.6 3.3z"/></svg>'
});

const compareIcon = new LabIcon({
  name: 'slmnb:compare',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><path class="jp-icon3" fill="#616161" ' +
    'd="M3 4h8v16H3zm2 2v12h4V6zm8-2h8v16h-8zm2 2v12h4V6z"/></svg>'
});

const CommandIDs = {
  insertFinetune: 'slmnb:insert-finetune-cell',
  insertExport: 'slmnb:insert-export-cell',
  showRuns: 'slmnb:show-runs',
  openRun: 'slmnb:open-run'
};

/** YAML in %%finetune cells, and the magic lines marked. */
const editorPlugin: JupyterFrontEndPlugin<void> = {
  id: 'slmnb:editor',
  description: 'Highlights the body of %%finetune cells as YAML and marks %%finetune / %opt lines.',
  autoStart: true,
  requires: [IEditorExtensionRegistry, IEditorLanguageRegistry],
  activate: async (
    app: JupyterFrontEnd,
    extensions: IEditorExtensionRegistry,
    languages: IEditorLanguageRegistry
  ) => {
    // Loaded once, up front: the factory below must hand each new editor its extension synchronously.
    const yaml = (await languages.getLanguage('yaml'))?.support ?? null;
    extensions.addExtension({
      name: 'slmnb:magics',
      factory: options =>
        EditorExtensionRegistry.createImmutableExtension(
          magicExtension(yaml as LanguageSupport | null, options.model.sharedModel.getSource())
        )
    });
  }
};

/** Cell templates, the runs panel, a run's metrics view and the status-bar item. */
const runsPlugin: JupyterFrontEndPlugin<void> = {
  id: 'slmnb:plugin',
  description:
    "Fine-tuning cell templates, the form's Insert as cell, the runs side panel and the active run in the status bar.",
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, IStatusBar, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker,
    palette: ICommandPalette | null,
    statusBar: IStatusBar | null,
    restorer: ILayoutRestorer | null
  ) => {
    const { commands, shell, serviceManager } = app;
    const model = new RunsModel(serviceManager.contents);
    const follow = () => {
      const current = notebooks.currentWidget;
      if (current) {
        model.folder = dirname(current.context.path);
      }
    };
    notebooks.currentChanged.connect(follow);
    follow();
    model.refresh();
    insertFormCells(notebooks);
    fitPlotlyCharts(); // the dashboards' charts follow their cell's width (plotly measures only once)

    const panel = new RunsPanel(model, run => commands.execute(CommandIDs.openRun, { path: run.path }));
    panel.id = 'slmnb-runs';
    panel.title.icon = runsIcon;
    shell.add(panel, 'left', { rank: 650 });
    restorer?.add(panel, 'slmnb-runs');

    const insert = (template: Template) => () => {
      const current = notebooks.currentWidget;
      if (current) {
        shell.activateById(current.id);
        insertTemplate(current, template, template === 'exportCompare' ? lastEnded(model.runs) : undefined);
      }
    };
    commands.addCommand(CommandIDs.insertFinetune, {
      label: 'Insert fine-tune cell',
      caption: 'A %%finetune cell that trains the embedded model on the bundled tones data',
      icon: runsIcon,
      isEnabled: () => notebooks.currentWidget !== null,
      execute: insert('finetune')
    });
    commands.addCommand(CommandIDs.insertExport, {
      label: 'Insert export and compare cell',
      caption: 'A %opt compare cell: exports the run to ONNX int4 and shows base and fine-tuned answers side by side',
      icon: compareIcon,
      isEnabled: () => notebooks.currentWidget !== null,
      execute: insert('exportCompare')
    });
    commands.addCommand(CommandIDs.showRuns, {
      label: 'Show fine-tuning runs',
      caption: 'The runs folder next to the current notebook',
      execute: () => {
        model.refresh();
        shell.activateById(panel.id);
      }
    });
    commands.addCommand(CommandIDs.openRun, {
      label: 'Open fine-tuning run',
      caption: "A run's config and its metrics",
      execute: async args => {
        const path = args.path as string;
        const config = await commands.execute('docmanager:open', { path: joinPath(path, 'config.yaml') });
        const id = `slmnb-run-${path}`;
        const existing = Array.from(shell.widgets('main')).find(widget => widget.id === id);
        if (existing) {
          shell.activateById(id);
          return;
        }
        const view = new MainAreaWidget({ content: new RunView(serviceManager.contents, path) });
        view.id = id;
        view.title.label = view.content.title.label;
        view.title.icon = runsIcon;
        shell.add(view, 'main', { mode: 'split-right', ref: config?.id ?? null });
      }
    });
    if (palette) {
      const category = 'Fine-tuning (slmnb)';
      for (const command of [CommandIDs.insertFinetune, CommandIDs.insertExport, CommandIDs.showRuns]) {
        palette.addItem({ command, category });
      }
    }

    if (statusBar) {
      const item = new RunStatus(model, () => commands.execute(CommandIDs.showRuns));
      statusBar.registerStatusItem('slmnb:run-status', {
        item,
        align: 'left',
        rank: 5,
        isActive: () => model.active !== null,
        activeStateChanged: model.changed
      });
    }
  }
};

/** The newest run that has ended with a result (the one an export cell most likely wants). */
function lastEnded(runs: IRunState[]): string | undefined {
  return runs.find(run => !isLive(run) && SAVED_STATUSES.includes(run.status))?.name;
}

export default [editorPlugin, runsPlugin];
