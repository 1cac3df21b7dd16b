/**
 * A run's metrics in the main area: loss and perplexity curves drawn from metrics.jsonl, the generation metrics per
 * step when its evaluations scored answers (accuracy, rougeL...), and the run's state.
 * It follows a live run (read again every 2 s) and stops reading once the run has ended.
 */
import { Contents } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { IRunState, isLive, joinPath, num, parsePythonJson, readText, runMetric, steps } from './runs';

interface IRecord {
  event: 'step' | 'eval';
  step: number;
  loss?: number;
  eval_loss?: number;
  perplexity?: number;
  metrics?: Record<string, number | null>;
}

const INTERVAL = 2000;
const SVG = 'http://www.w3.org/2000/svg';
/** One per score key, as the dashboard's third chart colours them (slmnb/notebook/charts.py METRIC_COLOURS). */
const METRIC_COLOURS = ['#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f'];

export class RunView extends Widget {
  constructor(
    private _contents: Contents.IManager,
    private _path: string
  ) {
    super();
    this.addClass('slmnb-RunView');
    const name = _path.split('/').pop() ?? _path;
    this.title.label = `${name} metrics`;
    this.title.closable = true;
    this._read();
  }

  dispose(): void {
    window.clearTimeout(this._timer);
    super.dispose();
  }

  private async _read(): Promise<void> {
    let state: IRunState | null = null;
    let records: IRecord[] = [];
    try {
      state = parsePythonJson(await this._text('run.json'));
      records = parseLines(await this._text('metrics.jsonl'));
    } catch (reason) {
      if (state === null) {
        this._show(null, [], `Could not read ${this._path}: ${String(reason)}`);
        return;
      }
    }
    this._show(state, records, '');
    if (state && isLive(state) && !this.isDisposed) {
      this._timer = window.setTimeout(() => this._read(), INTERVAL);
    }
  }

  private _text(file: string): Promise<string> {
    return readText(this._contents, joinPath(this._path, file));
  }

  private _show(state: IRunState | null, records: IRecord[], error: string): void {
    const node = this.node;
    node.replaceChildren();
    const heading = document.createElement('h2');
    heading.textContent = this._path;
    node.append(heading);
    if (error || state === null) {
      node.append(paragraph(error));
      return;
    }
    const train = records.filter(r => r.event === 'step' && r.loss !== undefined);
    const evals = records.filter(r => r.event === 'eval' && r.eval_loss !== undefined);
    const metric = runMetric(state);
    const summary = [
      `status ${state.status}`,
      `step ${steps(state)}`,
      train.length ? `loss ${num(train[train.length - 1].loss)}` : '',
      evals.length ? `eval loss ${num(evals[evals.length - 1].eval_loss)}` : '',
      evals.length ? `perplexity ${num(evals[evals.length - 1].perplexity)}` : '',
      metric ? `${metric[0]} ${metric[1]}` : '',
      state.elapsed !== undefined ? `${Math.round(state.elapsed)} s` : ''
    ].filter(Boolean);
    const line = paragraph(summary.join(' · '));
    line.className = 'slmnb-RunView-summary';
    node.append(line);
    if (state.reason) {
      node.append(paragraph(state.reason));
    }
    const charts = document.createElement('div');
    charts.className = 'slmnb-RunView-charts';
    charts.append(
      chart('loss', [
        { name: 'train', colour: '#1f77b4', points: train.map(r => [r.step, r.loss as number]) },
        { name: 'eval', colour: '#ff7f0e', points: evals.map(r => [r.step, r.eval_loss as number]) }
      ]),
      chart('perplexity (eval)', [
        { name: 'eval', colour: '#ff7f0e', points: evals.map(r => [r.step, r.perplexity as number]) }
      ])
    );
    const scores = metricSeries(records);
    if (scores.length) {
      const fractions = scores.every(s => s.points.every(([, y]) => y >= 0 && y <= 1));
      charts.append(chart(fractions ? 'metrics per step (%)' : 'metrics per step', scores, fractions));
    }
    node.append(charts);
  }

  private _timer = 0;
}

function parseLines(text: string): IRecord[] {
  const records: IRecord[] = [];
  for (const line of text.split('\n')) {
    try {
      records.push(parsePythonJson(line));
    } catch {
      // an empty last line, or the line a crash cut short
    }
  }
  return records;
}

/** One series per score key of the eval lines' "metrics" (perplexity has its own chart), first seen first. */
function metricSeries(records: IRecord[]): ISeries[] {
  const byKey = new Map<string, [number, number][]>();
  for (const record of records) {
    if (record.event !== 'eval' || record.metrics === null || typeof record.metrics !== 'object') {
      continue;
    }
    for (const [key, value] of Object.entries(record.metrics)) {
      if (key !== 'perplexity' && typeof value === 'number' && Number.isFinite(value)) {
        byKey.set(key, [...(byKey.get(key) ?? []), [record.step, value]]);
      }
    }
  }
  return [...byKey].map(([name, points], i) => ({ name, colour: METRIC_COLOURS[i % METRIC_COLOURS.length], points }));
}

function paragraph(text: string): HTMLElement {
  const p = document.createElement('p');
  p.textContent = text;
  return p;
}

interface ISeries {
  name: string;
  colour: string;
  points: [number, number][];
}

/**
 * A small line chart; perplexity spans orders of magnitude, so any chart whose values do is drawn on a log scale.
 * A percent chart (scores that are fractions) spans 0 to 100% and keeps its zeros.
 */
function chart(title: string, series: ISeries[], percent = false): SVGSVGElement {
  const width = 360;
  const height = 220;
  const pad = { left: 48, right: 12, top: 24, bottom: 28 };
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('class', 'slmnb-RunView-chart');
  svg.dataset.title = title;
  const shown = ([, y]: [number, number]) => Number.isFinite(y) && (percent || y > 0);
  const all = series.flatMap(s => s.points).filter(shown);
  add(svg, 'text', { x: pad.left, y: 16, class: 'slmnb-RunView-title' }, title);
  if (all.length === 0) {
    add(svg, 'text', { x: pad.left, y: height / 2 }, 'no points yet');
    return svg;
  }
  const xs = all.map(([x]) => x);
  const ys = all.map(([, y]) => y);
  const log = !percent && Math.max(...ys) / Math.min(...ys) > 100;
  const f = (y: number) => (log ? Math.log10(y) : y);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  let [y0, y1] = percent ? [0, 1] : [Math.min(...ys.map(f)), Math.max(...ys.map(f))];
  if (y1 - y0 < 1e-9) {
    [y0, y1] = [y0 - 1, y1 + 1];
  }
  const px = (x: number) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const py = (y: number) => height - pad.bottom - ((f(y) - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
  add(svg, 'line', { x1: pad.left, y1: height - pad.bottom, x2: width - pad.right, y2: height - pad.bottom, class: 'slmnb-RunView-axis' });
  add(svg, 'line', { x1: pad.left, y1: pad.top, x2: pad.left, y2: height - pad.bottom, class: 'slmnb-RunView-axis' });
  const label = (y: number) => (percent ? `${Math.round(y * 100)}%` : num(log ? 10 ** y : y));
  add(svg, 'text', { x: 4, y: pad.top + 4 }, label(y1));
  add(svg, 'text', { x: 4, y: height - pad.bottom }, label(y0));
  add(svg, 'text', { x: pad.left, y: height - 8 }, `step ${x0}`);
  add(svg, 'text', { x: width - pad.right - 60, y: height - 8 }, `step ${x1}`);
  // Legend entries after the title, wrapping to a second line when many (rouge alone brings three keys).
  let [legend, legendY] = [pad.left + 120, 16];
  for (const s of series) {
    const points = s.points.filter(shown);
    if (points.length === 0) {
      continue;
    }
    add(svg, 'polyline', {
      points: points.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(' '),
      stroke: s.colour,
      fill: 'none',
      'stroke-width': 1.5,
      'data-series': s.name
    });
    const room = Math.max(60, s.name.length * 6 + 12);
    if (legend + room > width && legend > pad.left + 120) {
      [legend, legendY] = [pad.left + 120, legendY + 11];
    }
    add(svg, 'text', { x: legend, y: legendY, fill: s.colour }, s.name);
    legend += room;
  }
  return svg;
}

function add(parent: Element, tag: string, attributes: Record<string, string | number>, text?: string): Element {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) {
    element.setAttribute(key, String(value));
  }
  if (text !== undefined) {
    element.textContent = text;
  }
  parent.append(element);
  return element;
}
