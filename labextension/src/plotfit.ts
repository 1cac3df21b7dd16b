/**
 * Keeps the dashboard's plotly charts as wide as their cell.
 *
 * plotly's widget draws a chart 700px wide when its element is not in the page yet (a widget view is drawn
 * before it is attached), and never measures it again: in a narrow pane the charts were cut off behind a
 * horizontal scrollbar. A chart drawn with plotly's `responsive` config (the dashboard's are) fits its element on
 * a window resize; this watches the output areas that hold a plotly chart and sends that resize whenever one
 * changes width, including when the chart first appears.
 */

const PLOT = '.js-plotly-plot';
const AREA = '.jp-OutputArea-output';

export function fitPlotlyCharts(root: HTMLElement = document.body): () => void {
  const widths = new WeakMap<Element, number>();
  let queued = false;
  const resize = () => {
    if (!queued) {
      queued = true;
      // One resize per frame, however many areas changed: plotly's widgets each listen to the window.
      requestAnimationFrame(() => {
        queued = false;
        window.dispatchEvent(new Event('resize'));
      });
    }
  };
  const areas = new ResizeObserver(entries => {
    for (const entry of entries) {
      const width = Math.round(entry.contentRect.width);
      if (width > 0 && widths.get(entry.target) !== width) {
        widths.set(entry.target, width);
        resize();
      }
    }
  });
  const watch = (node: Node) => {
    if (!(node instanceof Element)) {
      return;
    }
    // A chart's class comes with its first draw, which adds the chart's own nodes: look up from those too.
    const inside = node.closest(PLOT);
    const plots = inside ? [inside] : Array.from(node.querySelectorAll(PLOT));
    for (const plot of plots) {
      const area = plot.closest(AREA);
      if (area && !widths.has(area)) {
        widths.set(area, -1);
        areas.observe(area); // its first report, at once, fits the new chart
      }
    }
  };
  const added = new MutationObserver(records => {
    for (const record of records) {
      record.addedNodes.forEach(watch);
    }
  });
  added.observe(root, { childList: true, subtree: true });
  watch(root);
  return () => {
    added.disconnect();
    areas.disconnect();
  };
}
