/**
 * Hyperparameter searches in the runs folder, as the runs panel lists them.
 *
 * A search named S keeps its state in runs/S/search.json (slmnb/tuning/study.py's Search.state(), rewritten at
 * each trial's start and end and on stop, pause and resume), and each of its trials is a normal run folder runs/S-<n>, n being Optuna's trial
 * number. The panel reads no Optuna: the folder names tie a trial's run to its search, and search.json says what
 * Optuna made of it (complete, pruned...) and which trial is best.
 */
import { metricText } from './metric';
import type { IRunState } from './runs';

/** A trial as search.json lists it. */
export interface ISearchTrial {
  number: number;
  run: string;
  state: string;
  value?: number | null;
  steps?: number;
  max_steps?: number | null;
  params?: Record<string, unknown>;
  /** False for a cut trial whose parameters were queued again: num_trials counts the retry instead. */
  counted?: boolean;
}

export interface ISearchState {
  name: string;
  path: string;
  status: string;
  reason?: string;
  objective: string;
  direction?: string;
  num_trials: number;
  trials: ISearchTrial[];
  best?: { number: number; run: string; value: number | null; params?: Record<string, unknown> } | null;
  steps_saved?: number;
  updated_at?: number;
}

/** A trial's run folder under its search: the run row as ever, plus what the search knows of it. */
export interface ITrialRun {
  number: number;
  run: IRunState;
  trial?: ISearchTrial;
  best: boolean;
}

/** What the panel lists, newest first: runs of no search, and searches with their trials' runs. */
export type Entry = { kind: 'run'; run: IRunState } | { kind: 'search'; search: ISearchState; trials: ITrialRun[] };

/** Trial states that count towards "k/N trials": the trial is over, whatever came of it. */
const ENDED_TRIALS = ['complete', 'pruned', 'failed'];

/**
 * Each run under the search it belongs to, by name: S-<digits> for a search S (the longest such S, so a search
 * "a-1" keeps "a-1-0" from search "a"). Entries are ordered by their newest start: a search by its newest trial's
 * run (its search.json's last write before any trial has a folder).
 */
export function groupRuns(runs: IRunState[], searches: ISearchState[]): Entry[] {
  const trials = new Map<string, ITrialRun[]>(searches.map(search => [search.name, []]));
  const loose: IRunState[] = [];
  for (const run of runs) {
    const owner = ownerOf(run.name, searches);
    if (owner === null) {
      loose.push(run);
      continue;
    }
    const number = Number(run.name.slice(owner.name.length + 1));
    const trial = owner.trials.find(t => t.run === run.name) ?? owner.trials.find(t => t.number === number);
    trials.get(owner.name)!.push({ number, run, trial, best: owner.best?.run === run.name });
  }
  const entries: [number, Entry][] = loose.map(run => [run.started_at ?? 0, { kind: 'run', run }]);
  for (const search of searches) {
    const own = trials.get(search.name)!.sort((a, b) => a.number - b.number);
    const starts = own.map(t => t.run.started_at ?? 0);
    const when = starts.length > 0 ? Math.max(...starts) : (search.updated_at ?? 0);
    entries.push([when, { kind: 'search', search, trials: own }]);
  }
  return entries.sort((a, b) => b[0] - a[0]).map(([, entry]) => entry);
}

function ownerOf(runName: string, searches: ISearchState[]): ISearchState | null {
  let owner: ISearchState | null = null;
  for (const search of searches) {
    const rest = runName.slice(search.name.length + 1);
    if (runName.startsWith(`${search.name}-`) && /^\d+$/.test(rest)) {
      if (owner === null || search.name.length > owner.name.length) {
        owner = search;
      }
    }
  }
  return owner;
}

/** "k/N trials", k being the trials that ended (complete, pruned or failed), as the Python repr counts them. */
export function trialCount(search: ISearchState): string {
  const done = search.trials.filter(t => ENDED_TRIALS.includes(t.state) && t.counted !== false).length;
  return `${done}/${search.num_trials} trials`;
}

/** The best objective as [objective, text] ("eval_loss", "0.5123"; "accuracy", "91.7%"), or null before any. */
export function bestText(search: ISearchState): [string, string] | null {
  const value = search.best?.value;
  if (typeof value !== 'number') {
    return null;
  }
  return [search.objective, metricText(search.objective, value)];
}

/** Parameters as one line for a tooltip: "learning_rate 0.001234, lora_r 4". */
export function paramsText(params: Record<string, unknown> | undefined): string {
  return Object.entries(params ?? {})
    .map(([key, value]) => `${key} ${typeof value === 'number' ? Number(value.toPrecision(4)) : String(value)}`)
    .join(', ');
}
