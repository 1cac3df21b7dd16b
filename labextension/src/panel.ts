/**
 * The "Fine-tuning runs" side panel: one row per run folder next to the current notebook, and one per
 * hyperparameter search with its trials' runs nested under it.
 */
import { Widget } from '@lumino/widgets';

import { metricText } from './metric';
import { IRunState, RunsModel, isLive, num, runMetric, steps } from './runs';
import { ISearchState, ITrialRun, bestText, groupRuns, paramsText, trialCount } from './searches';

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
    if (model.runs.length === 0 && model.searches.length === 0) {
      node.append(note('No runs here yet: run a %%finetune cell in a notebook of this folder.'));
      return;
    }
    const list = document.createElement('ul');
    list.className = 'slmnb-RunsPanel-list';
    for (const entry of groupRuns(model.runs, model.searches)) {
      list.append(entry.kind === 'run' ? this._runItem(entry.run) : this._searchItem(entry.search, entry.trials));
    }
    node.append(list);
  }

  /** Two lines per run, so the panel reads in a narrow sidebar: name, status and Stop; then the numbers. */
  private _runItem(run: IRunState, trial?: ITrialRun): HTMLElement {
    const model = this._model;
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
    if (trial) {
      top.append(...trialParts(trial));
    }
    if (isLive(run) && run.status !== 'stopping') {
      top.append(
        stopButton('End the run at its next step, saving the adapter (works while the notebook is busy)', () =>
          model.requestStop(run)
        )
      );
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
        numbers.append(valued(`slmnb-RunsPanel-${key}`, `${label}${value}`, value));
      }
    }
    const metric = runMetric(run);
    if (metric) {
      // The main generation metric at the last evaluation (accuracy 91.7%); its best so far on hover.
      const [key, text] = metric;
      const part = valued('slmnb-RunsPanel-metric', `${key} ${text}`, text);
      part.dataset.metric = key;
      const best = run.metrics?.best?.[key];
      part.title = `${key} at the last evaluation` + (typeof best === 'number' ? `; best ${metricText(key, best)}` : '');
      numbers.append(part);
    }
    item.append(top, numbers);
    return item;
  }

  /**
   * A search: its status, trials ended of those asked for, the best objective and Stop; under it its trials'
   * runs, indented, in trial order. The search row itself opens nothing: its trials are the runs.
   */
  private _searchItem(search: ISearchState, trials: ITrialRun[]): HTMLElement {
    const model = this._model;
    const item = document.createElement('li');
    item.className = 'slmnb-RunsPanel-search';
    item.dataset.search = search.name;
    item.dataset.status = search.status;
    const top = document.createElement('div');
    top.className = 'slmnb-RunsPanel-top';
    const status = span(`slmnb-status slmnb-status-${search.status}`, search.status);
    if (search.reason) {
      status.title = search.reason;
    }
    top.append(span('slmnb-RunsPanel-name', search.name), span('slmnb-RunsPanel-kind', 'search'), status);
    if (isLive(search) && search.status !== 'stopping') {
      top.append(
        stopButton('Stop the trial training now and start no other (works while the notebook is busy)', () =>
          model.requestStop(search)
        )
      );
    }
    const numbers = document.createElement('div');
    numbers.className = 'slmnb-RunsPanel-numbers';
    const count = trialCount(search);
    numbers.append(valued('slmnb-RunsPanel-count', count, count.split(' ')[0]));
    const best = bestText(search);
    if (best) {
      const [objective, text] = best;
      const part = valued('slmnb-RunsPanel-best-value', `best ${objective} ${text}`, text);
      part.dataset.objective = objective;
      part.title = `Trial ${search.best!.run}: ${paramsText(search.best!.params)}`;
      numbers.append(part);
    }
    item.append(top, numbers);
    if (trials.length > 0) {
      const nested = document.createElement('ul');
      nested.className = 'slmnb-RunsPanel-list slmnb-RunsPanel-trials';
      for (const trial of trials) {
        const row = this._runItem(trial.run, trial);
        row.dataset.trial = String(trial.number);
        nested.append(row);
      }
      item.append(nested);
    }
    return item;
  }
}

/** What the search made of a trial (pruned, complete...), its value and parameters on hover; a star if best. */
function trialParts(trial: ITrialRun): HTMLElement[] {
  const parts: HTMLElement[] = [];
  if (trial.trial) {
    const { state, value, params } = trial.trial;
    const tag = span(`slmnb-RunsPanel-trial slmnb-trial-${state}`, state);
    tag.dataset.state = state;
    tag.title = `Trial ${trial.number}` + (typeof value === 'number' ? `, objective ${num(value)}` : '') +
      (params && Object.keys(params).length > 0 ? `: ${paramsText(params)}` : '');
    parts.push(tag);
  }
  if (trial.best) {
    const star = span('slmnb-RunsPanel-best', '★');
    star.title = 'best trial';
    parts.push(star);
  }
  return parts;
}

/** A Stop that asks once: it disables itself, and the next poll drops it when the status reads stopping. */
function stopButton(title: string, stop: () => void): HTMLElement {
  const button = document.createElement('button');
  button.className = 'jp-Button slmnb-RunsPanel-stop';
  button.textContent = 'Stop';
  button.title = title;
  button.onclick = event => {
    event.stopPropagation();
    button.disabled = true;
    stop();
  };
  return button;
}

function valued(className: string, text: string, value: string): HTMLElement {
  const element = span(className, text);
  element.dataset.value = value;
  return element;
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
