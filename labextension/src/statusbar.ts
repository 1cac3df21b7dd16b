/**
 * The status-bar item: the active run's step/max and loss while one is training; hidden otherwise.
 *
 * The loss is the last logged step's (run.json has no other), labelled so: the dashboard shows it beside the
 * smoothed loss its chart draws, so the two numbers never seem to disagree.
 */
import { Widget } from '@lumino/widgets';

import { RunsModel, num, steps } from './runs';

export class RunStatus extends Widget {
  constructor(
    private _model: RunsModel,
    onClick: () => void
  ) {
    super();
    this.addClass('slmnb-RunStatus');
    this.node.title = 'The run training now: click to show the runs panel';
    this.node.onclick = onClick;
    this._model.changed.connect(() => this.render(), this);
    this.render();
  }

  render(): void {
    const run = this._model.active;
    if (run === null) {
      this.node.textContent = '';
      return;
    }
    const step = run.step !== undefined ? `: step ${steps(run)}` : '';
    const loss = run.loss !== undefined ? ` · loss ${num(run.loss)} (last step)` : '';
    const status = run.status === 'running' ? '' : ` (${run.status})`;
    this.node.textContent = `Fine-tuning ${run.name}${step}${loss}${status}`;
  }
}
