/**
 * The config form's "Insert as cell" (slmnb.form(), %finetune --form): the kernel displays an output of type
 * application/vnd.slmnb.cell+json holding the %%finetune cell and the form's widget id. Here that output, heard live
 * on the kernel's messages, becomes a code cell directly below the cell that shows the form; the output itself
 * reads as a short note. Front ends without this extension show the output's text/plain instead: the cell to copy.
 *
 * Only live messages insert: a notebook reopened later replays no message, so the cell is never inserted twice.
 */
import type { ICodeCellModel } from '@jupyterlab/cells';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import type { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import type { KernelMessage } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

export const CELL_MIME = 'application/vnd.slmnb.cell+json';
const WIDGET_VIEW_MIME = 'application/vnd.jupyter.widget-view+json';

interface ICellPayload {
  source: string;
  form?: string; // the model id of the form's outermost widget
}

/** Watch every notebook, open now or later, for the form's cells. */
export function insertFormCells(notebooks: INotebookTracker): void {
  // A notebook open in two views, or two notebooks on one kernel, hear the same message: it inserts one cell.
  const handled = new Set<string>();
  const watch = (panel: NotebookPanel) => {
    addNoteRenderer(panel);
    panel.sessionContext.iopubMessage.connect((_, message) => {
      const payload = cellPayload(message);
      if (payload && !handled.has(message.header.msg_id)) {
        handled.add(message.header.msg_id);
        insertBelowForm(notebooks, panel, payload);
      }
    });
  };
  notebooks.forEach(watch);
  notebooks.widgetAdded.connect((_, panel) => watch(panel));
}

function cellPayload(message: KernelMessage.IMessage): ICellPayload | null {
  const type = message.header.msg_type;
  if (type !== 'display_data' && type !== 'execute_result') {
    return null;
  }
  const data = (message.content as KernelMessage.IDisplayDataMsg['content']).data ?? {};
  const payload = data[CELL_MIME] as unknown as ICellPayload | undefined;
  return payload && typeof payload.source === 'string' ? payload : null;
}

/**
 * Below the cell whose output shows the form; if no output shows it (the form was displayed inside another widget),
 * below the active cell of the current notebook, provided that notebook runs the kernel that sent the cell.
 */
function insertBelowForm(notebooks: INotebookTracker, heardBy: NotebookPanel, payload: ICellPayload): void {
  const form = payload.form;
  let panel = form ? notebooks.find(candidate => formCellIndex(candidate, form) >= 0) : undefined;
  let index = panel && form ? formCellIndex(panel, form) : -1;
  if (!panel) {
    const current = notebooks.currentWidget;
    const kernel = (p: NotebookPanel) => p.sessionContext.session?.kernel?.id;
    if (!current || kernel(current) !== kernel(heardBy)) {
      return;
    }
    panel = current;
    index = current.content.activeCellIndex;
  }
  panel.model?.sharedModel.insertCell(index + 1, { cell_type: 'code', source: payload.source });
  panel.content.activeCellIndex = index + 1;
  panel.content.activeCell?.node.scrollIntoView({ block: 'nearest' });
}

/** The index of the cell with an output showing the widget `modelId`, or -1. */
function formCellIndex(panel: NotebookPanel, modelId: string): number {
  const cells = panel.model?.cells;
  for (let i = 0; cells && i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code') {
      continue;
    }
    const outputs = (cell as ICodeCellModel).outputs;
    for (let j = 0; j < outputs.length; j++) {
      const view = outputs.get(j).data[WIDGET_VIEW_MIME] as { model_id?: string } | undefined;
      if (view?.model_id === modelId) {
        return i;
      }
    }
  }
  return -1;
}

/** Where the extension runs, the output says what it did instead of showing the text to copy. */
class InsertedNote extends Widget implements IRenderMime.IRenderer {
  constructor() {
    super();
    this.addClass('slmnb-InsertedNote');
  }

  renderModel(): Promise<void> {
    this.node.textContent = 'Inserted the %%finetune cell below the form: run it to start.';
    return Promise.resolve();
  }
}

const noteFactory: IRenderMime.IRendererFactory = {
  safe: true,
  mimeTypes: [CELL_MIME],
  createRenderer: () => new InsertedNote()
};

function addNoteRenderer(panel: NotebookPanel): void {
  const rendermime = panel.content.rendermime;
  if (!rendermime.getFactory(CELL_MIME)) {
    // Ahead of text/plain (rank 120), so the output shows the note rather than the text to copy.
    rendermime.addFactory(noteFactory, 50);
  }
}
