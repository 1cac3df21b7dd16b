/**
 * A run's main metric, as the Python side's runs table shows it (main_metric in slmnb/notebook/charts.py, score_text
 * in slmnb/metrics; tests/test_labextension.py keeps the two equal): the first score in run.json's metrics.last that
 * is not a loss or a perplexity, a fraction written as a percentage ("accuracy 91.7%").
 *
 * No imports, so the test can run this file alone under Node.
 */

/** slmnb.metrics.greater_is_better's rule: perplexity and anything ending in "loss" are lower-is-better. */
export function lowerIsBetter(key: string): boolean {
  const name = key.startsWith('eval_') ? key.slice('eval_'.length) : key;
  return name === 'perplexity' || name.endsWith('loss');
}

/**
 * A score as people read it: a fraction as a percentage to one decimal, another scale to 4 significant digits, a
 * non-finite value as a dash.
 */
export function metricText(key: string, value: number): string {
  if (!Number.isFinite(value)) {
    return '—';
  }
  if (!lowerIsBetter(key) && value >= 0 && value <= 1) {
    return `${(value * 100).toFixed(1)}%`;
  }
  return Number(value.toPrecision(4)).toString();
}

/** The first usable score of a { key: value } mapping (run.json's metrics.last), or null when it has none. */
export function mainMetric(scores: unknown): [string, number] | null {
  if (scores === null || typeof scores !== 'object' || Array.isArray(scores)) {
    return null;
  }
  for (const [key, value] of Object.entries(scores as Record<string, unknown>)) {
    if (!lowerIsBetter(key) && typeof value === 'number' && Number.isFinite(value)) {
      return [key, value];
    }
  }
  return null;
}
