/**
 * The runs folder next to the current notebook, read through Jupyter's contents API (no server extension).
 *
 * Each run folder holds run.json, which the training thread rewrites at most once a second with its status,
 * step, max_steps, last loss, last eval perplexity and generation metrics: one small file per run is all a poll
 * reads. A search's folder holds search.json instead (see searches.ts). The poll is quick while a run or a search
 * is live and slow otherwise, and the side panel and the status bar share it.
 */
import { Contents } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { mainMetric, metricText } from './metric';
import type { ISearchState } from './searches';
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

/** Whether a run, or a search, is still going (a search's statuses are a run's: RunState). */
export function isLive(item: { status: string }): boolean {
  return LIVE_STATUSES.includes(item.status);
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
      this._searches = [];
      this._searchPaths.clear();
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

  /** Searches (folders with search.json and no run.json), in no particular order: the panel groups them. */
  get searches(): ISearchState[] {
    return this._searches;
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

  /** Whether something may change soon: a run is live, or a search is (between two trials no run is). */
  get live(): boolean {
    return this.active !== null || this._searches.some(isLive);
  }

  /**
   * Poll now, then keep polling: every second while a run or a search is live, every 5 s otherwise. A call while a
   * poll is out takes over the schedule, so there is only ever one polling loop.
   */
  refresh(): void {
    window.clearTimeout(this._timer);
    const generation = ++this._generation;
    this._poll()
      .catch(() => undefined)
      .then(() => {
        if (generation === this._generation && !this._disposed) {
          const wait = this.live ? this.liveInterval : this.idleInterval;
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
    let searches: ISearchState[] = [];
    let error = '';
    try {
      // Looked up in the notebook's folder first: asking for a runs/ that does not exist yet would put a 404
      // warning in the server's log at every poll.
      if ((await this._children(this._folder)).some(item => item.name === this.runsDir)) {
        const dirs = (await this._children(folder)).filter(item => item.type === 'directory');
        const read = await Promise.all(dirs.map(dir => this._read(dir.path, dir.name)));
        runs = read.filter((item): item is RunFolder => item?.kind === 'run').map(item => item.state);
        searches = read.filter((item): item is SearchFolder => item?.kind === 'search').map(item => item.state);
      }
    } catch (reason) {
      error = `Could not read ${folder}: ${String(reason)}`;
    }
    if (folder !== this.runsFolder) {
      return; // the notebook changed while this poll was out
    }
    runs.sort((a, b) => (b.started_at ?? 0) - (a.started_at ?? 0));
    // updated_at changes at every write of search.json, which is no news in itself.
    const seen = (s: ISearchState[]) => s.map(({ updated_at, ...rest }) => rest);
    const before = JSON.stringify([this._runs, seen(this._searches), this._error]);
    this._runs = runs;
    this._searches = searches;
    this._error = error;
    if (JSON.stringify([runs, seen(searches), error]) !== before) {
      this._changed.emit();
    }
  }

  /**
   * Ask a run to stop at its next step, or a search to stop its trial and start no other. The dashboard's Stop goes
   * through the kernel, which cannot hear it while a cell blocks (run.wait() does); the training thread looks for
   * this file in its folder once a second instead (a search's thread, twice a second).
   */
  async requestStop(item: { path: string }): Promise<void> {
    await this._contents.save(joinPath(item.path, 'stop-requested'), {
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

  /**
   * A folder's run.json, else its search.json. A folder seen as a search is asked for search.json first, so a
   * search's poll does not put a 404 for its missing run.json in the server's log every second.
   */
  private async _read(path: string, name: string): Promise<RunFolder | SearchFolder | null> {
    const asRun = async (): Promise<RunFolder> => {
      const state = parsePythonJson(await readText(this._contents, joinPath(path, 'run.json')));
      return { kind: 'run', state: { ...state, name: state.name ?? name, path } };
    };
    const asSearch = async (): Promise<SearchFolder> => {
      const state = parsePythonJson(await readText(this._contents, joinPath(path, 'search.json')));
      this._searchPaths.add(path);
      return { kind: 'search', state: { ...state, name: state.name ?? name, path, trials: state.trials ?? [] } };
    };
    const [first, second] = this._searchPaths.has(path) ? [asSearch, asRun] : [asRun, asSearch];
    try {
      return await first();
    } catch {
      this._searchPaths.delete(path);
    }
    try {
      return await second();
    } catch {
      return null; // neither a run nor a search folder, or its file between two writes
    }
  }

  private _folder = '';
  private _runs: IRunState[] = [];
  private _searches: ISearchState[] = [];
  private _searchPaths = new Set<string>();
  private _error = '';
  private _timer = 0;
  private _generation = 0;
  private _disposed = false;
  private _changed = new Signal<this, void>(this);
}

type RunFolder = { kind: 'run'; state: IRunState };
type SearchFolder = { kind: 'search'; state: ISearchState };

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
