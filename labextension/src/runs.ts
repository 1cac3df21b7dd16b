/**
 * The runs folder next to the current notebook, read through Jupyter's contents API (no server extension).
 *
 * Each run folder holds run.json, which the training thread rewrites at most once a second with its status,
 * step, max_steps, last loss, last eval perplexity and generation metrics: one small file per run is all a poll
 * reads. The poll is
 * quick while a run is live and slow otherwise, and the side panel and the status bar share it.
 */
import { Contents } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { mainMetric, metricText } from './metric';
import states from './states.json';

/** Statuses of a run that is still going: slmnb.RunState's, which a Python test keeps equal to states.json. */
export const LIVE_STATUSES: string[] = states.live;
/** Statuses of a run that has ended and may have saved weights to export. */
export const SAVED_STATUSES: string[] = ['finished', 'stopped'];

export interface IRunState {
  name: string;
  path: string;
  status: string;
  step?: number;
  max_steps?: number;
  loss?: number;
  eval_loss?: number;
  perplexity?: number;
  elapsed?: number;
  started_at?: number;
  updated_at?: number;
  reason?: string | null;
  /** The generation metrics at the last evaluation and the best of each ({ accuracy: 0.917, f1: 0.9 }). */
  metrics?: { last?: Record<string, number | null>; best?: Record<string, number | null> };
}

export function isLive(run: IRunState): boolean {
  return LIVE_STATUSES.includes(run.status);
}

export function joinPath(...parts: string[]): string {
  return parts.filter(p => p !== '').join('/');
}

export function dirname(path: string): string {
  const cut = path.lastIndexOf('/');
  return cut < 0 ? '' : path.slice(0, cut);
}

export class RunsModel {
  constructor(private _contents: Contents.IManager) {}

  /** Emitted after every poll that changed what is known. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The folder whose runs/ is listed: the current notebook's folder. */
  get folder(): string {
    return this._folder;
  }

  set folder(value: string) {
    if (value !== this._folder) {
      this._folder = value;
      this._runs = [];
      this._error = '';
      this._changed.emit();
      this.refresh();
    }
  }

  get runsFolder(): string {
    return joinPath(this._folder, this.runsDir);
  }

  /** Runs, newest first. */
  get runs(): IRunState[] {
    return this._runs;
  }

  /** The run that is training now, if any (one per kernel; the newest live one otherwise). */
  get active(): IRunState | null {
    return this._runs.find(isLive) ?? null;
  }

  /** Why the folder could not be read, or '' (a missing runs/ is not an error: there are no runs yet). */
  get error(): string {
    return this._error;
  }

  runsDir = 'runs';
  liveInterval = 1000;
  idleInterval = 5000;

  /**
   * Poll now, then keep polling: every second while a run is live, every 5 s otherwise. A call while a poll is out
   * takes over the schedule, so there is only ever one polling loop.
   */
  refresh(): void {
    window.clearTimeout(this._timer);
    const generation = ++this._generation;
    this._poll()
      .catch(() => undefined)
      .then(() => {
        if (generation === this._generation && !this._disposed) {
          const wait = this.active ? this.liveInterval : this.idleInterval;
          this._timer = window.setTimeout(() => this.refresh(), wait);
        }
      });
  }

  dispose(): void {
    this._disposed = true;
    window.clearTimeout(this._timer);
  }

  private async _poll(): Promise<void> {
    const folder = this.runsFolder;
    let runs: IRunState[] = [];
    let error = '';
    try {
      // Looked up in the notebook's folder first: asking for a runs/ that does not exist yet would put a 404
      // warning in the server's log at every poll.
      if ((await this._children(this._folder)).some(item => item.name === this.runsDir)) {
        const dirs = (await this._children(folder)).filter(item => item.type === 'directory');
        runs = (await Promise.all(dirs.map(dir => this._read(dir.path, dir.name)))).filter(
          (run): run is IRunState => run !== null
        );
      }
    } catch (reason) {
      error = `Could not read ${folder}: ${String(reason)}`;
    }
    if (folder !== this.runsFolder) {
      return; // the notebook changed while this poll was out
    }
    runs.sort((a, b) => (b.started_at ?? 0) - (a.started_at ?? 0));
    const before = JSON.stringify([this._runs, this._error]);
    this._runs = runs;
    this._error = error;
    if (JSON.stringify([runs, error]) !== before) {
      this._changed.emit();
    }
  }

  /**
   * Ask a run to stop at its next step. The dashboard's Stop goes through the kernel, which cannot hear it while a
   * cell blocks (run.wait() does); the training thread looks for this file in its folder once a second instead.
   */
  async requestStop(run: IRunState): Promise<void> {
    await this._contents.save(joinPath(run.path, 'stop-requested'), {
      type: 'file',
      format: 'text',
      content: 'Stop asked from the JupyterLab runs panel.\n'
    });
    this.refresh();
  }

  private async _children(path: string): Promise<Contents.IModel[]> {
    const listing = await this._contents.get(path, { content: true, type: 'directory' });
    return listing.content as Contents.IModel[];
  }

  private async _read(path: string, name: string): Promise<IRunState | null> {
    try {
      const state = parsePythonJson(await readText(this._contents, joinPath(path, 'run.json')));
      return { ...state, name: state.name ?? name, path };
    } catch {
      return null; // not a run folder, or run.json between two writes
    }
  }

  private _folder = '';
  private _runs: IRunState[] = [];
  private _error = '';
  private _timer = 0;
  private _generation = 0;
  private _disposed = false;
  private _changed = new Signal<this, void>(this);
}

export async function readText(contents: Contents.IManager, path: string): Promise<string> {
  const file = await contents.get(path, { content: true, type: 'file', format: 'text' });
  return file.content as string;
}

/**
 * JSON as Python writes it: json.dumps spells a diverged loss or an overflowed perplexity NaN / Infinity, which
 * JSON.parse refuses, so those become null (shown as blank).
 */
export function parsePythonJson(text: string): any {
  return JSON.parse(text.replace(/\bNaN\b|-?\bInfinity\b/g, 'null'));
}

/** A number as the Python side prints it: 4 significant digits. */
export function num(value: number | undefined | null): string {
  if (value === undefined || value === null || !Number.isFinite(value)) {
    return '';
  }
  return Number(value.toPrecision(4)).toString();
}

export function steps(run: IRunState): string {
  if (run.step === undefined) {
    return '';
  }
  return run.max_steps ? `${run.step}/${run.max_steps}` : `${run.step}`;
}

/** The run's main metric as [key, text], such as ['accuracy', '91.7%'], or null when its evaluations scored none. */
export function runMetric(run: IRunState): [string, string] | null {
  const main = mainMetric(run.metrics?.last);
  return main === null ? null : [main[0], metricText(...main)];
}
