/**
 * The "Fine-tuning runs" side panel: one row per run folder next to the current notebook.
 */
import { Widget } from '@lumino/widgets';

import { metricText } from './metric';
import { IRunState, RunsModel, isLive, num, runMetric, steps } from './runs';

export class RunsPanel extends Widget {
  constructor(
    private _model: RunsModel,
    private _open: (run: IRunState) => void
  ) {
    super();
    this.addClass('slmnb-RunsPanel');
    this.title.caption = 'Fine-tuning runs';
    this._model.changed.connect(() => this.render(), this);
    this.render();
  }

  render(): void {
    const model = this._model;
    const node = this.node;
    node.replaceChildren();

    const header = document.createElement('div');
    header.className = 'slmnb-RunsPanel-header';
    const title = document.createElement('h2');
    title.textContent = 'Fine-tuning runs';
    const refresh = document.createElement('button');
    refresh.className = 'jp-Button slmnb-RunsPanel-refresh';
    refresh.textContent = 'Refresh';
    refresh.title = 'Read the runs folder again';
    refresh.onclick = () => model.refresh();
    header.append(title, refresh);
    const folder = document.createElement('div');
    folder.className = 'slmnb-RunsPanel-folder';
    folder.textContent = `${model.runsFolder}/`;
    node.append(header, folder);

    if (model.error) {
      node.append(note(model.error));
      return;
    }
    if (model.runs.length === 0) {
      node.append(note('No runs here yet: run a %%finetune cell in a notebook of this folder.'));
      return;
    }
    // Two lines per run, so the panel reads in a narrow sidebar: name, status and Stop; then the numbers.
    const list = document.createElement('ul');
    list.className = 'slmnb-RunsPanel-list';
    for (const run of model.runs) {
      const item = document.createElement('li');
      item.className = 'slmnb-RunsPanel-run';
      item.dataset.run = run.name;
      item.title = `Open ${run.name}: its config and its metrics`;
      item.onclick = () => this._open(run);
      const top = document.createElement('div');
      top.className = 'slmnb-RunsPanel-top';
      const status = span(`slmnb-status slmnb-status-${run.status}`, run.status);
      if (run.reason) {
        status.title = run.reason;
      }
      top.append(span('slmnb-RunsPanel-name', run.name), status);
      if (isLive(run) && run.status !== 'stopping') {
        const stop = document.createElement('button');
        stop.className = 'jp-Button slmnb-RunsPanel-stop';
        stop.textContent = 'Stop';
        stop.title = 'End the run at its next step, saving the adapter (works while the notebook is busy)';
        stop.onclick = event => {
          event.stopPropagation();
          stop.disabled = true;
          model.requestStop(run);
        };
        top.append(stop);
      }
      const numbers = document.createElement('div');
      numbers.className = 'slmnb-RunsPanel-numbers';
      const parts: [string, string, string][] = [
        ['steps', 'step ', steps(run)],
        ['loss', 'loss ', num(run.loss)],
        ['ppl', 'ppl ', num(run.perplexity)]
      ];
      for (const [key, label, value] of parts) {
        if (value) {
          const part = span(`slmnb-RunsPanel-${key}`, `${label}${value}`);
          part.dataset.value = value;
          numbers.append(part);
        }
      }
      const metric = runMetric(run);
      if (metric) {
        // The main generation metric at the last evaluation (accuracy 91.7%); its best so far on hover.
        const [key, text] = metric;
        const part = span('slmnb-RunsPanel-metric', `${key} ${text}`);
        part.dataset.metric = key;
        part.dataset.value = text;
        const best = run.metrics?.best?.[key];
        part.title = `${key} at the last evaluation` + (typeof best === 'number' ? `; best ${metricText(key, best)}` : '');
        numbers.append(part);
      }
      item.append(top, numbers);
      list.append(item);
    }
    node.append(list);
  }
}

function span(className: string, text: string): HTMLElement {
  const element = document.createElement('span');
  element.className = className;
  element.textContent = text;
  return element;
}

function note(text: string): HTMLElement {
  const p = document.createElement('p');
  p.className = 'slmnb-RunsPanel-note';
  p.textContent = text;
  return p;
}
