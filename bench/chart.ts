import type { Summary } from './stats.js';
import { meets, type Goal } from './targets.js';

/** One bar: a ratio with the confidence interval of its median, and the goal it is judged by, if any. */
export interface Bar {
  readonly label: string;
  readonly ratio: Summary;
  readonly goal?: Goal;
}

/** A titled group of bars. */
export interface ChartSection {
  readonly title: string;
  readonly bars: readonly Bar[];
}

/**
 * Renders ratios as a horizontal bar chart in SVG, drawn from scratch (no external service).
 * Each bar shows the median, a whisker for its confidence interval, and, when the bar has a goal,
 * a dashed line at the goal and a colour for met (green) or missed (red).
 * @param title - the heading drawn on top
 * @param subtitle - a line drawn on its right, e.g. the machine and the date
 * @param sections - groups of bars, drawn one under the other
 * @return the SVG document
 */
export function renderChart(title: string, subtitle: string, sections: readonly ChartSection[]): string {
  const bars = sections.flatMap((section) => section.bars);
  const scaleEnd = Math.ceil(Math.max(1.25, ...bars.map((bar) => bar.ratio.high), ...bars.map((bar) => bar.goal?.value ?? 0)) * 4) / 4;
  const x = (ratio: number): number => PLOT_LEFT + (ratio / scaleEnd) * PLOT_WIDTH;

  const body: string[] = [];
  let y = 48;
  for (const section of sections) {
    body.push(text(16, y + 14, section.title, 'start', 'section'));
    y += 26;
    for (const bar of section.bars) {
      body.push(...drawBar(bar, y, x));
      y += ROW;
    }
    y += 10;
  }
  const plotTop = 56;
  const plotBottom = y - 6;
  const grid: string[] = [];
  for (let tick = 0; tick <= scaleEnd + 1e-9; tick += 0.25) {
    const at = x(tick).toFixed(1);
    grid.push(`<line x1="${at}" y1="${plotTop}" x2="${at}" y2="${plotBottom}" class="${tick === 1 ? 'one' : 'grid'}"/>`);
    grid.push(text(x(tick), plotBottom + 16, `${tick.toFixed(2)}×`, 'middle', 'axis'));
  }
  const height = plotBottom + 44;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" role="img" aria-label="${escape(title)}">`,
    '<style>',
    'text { font: 12px system-ui, -apple-system, "Segoe UI", sans-serif; fill: #1a202c; }',
    '.title { font-size: 15px; font-weight: 600; } .section { font-weight: 600; } .axis { fill: #4a5568; font-size: 11px; }',
    '.grid { stroke: #e2e8f0; } .one { stroke: #4a5568; } .goal { stroke: #1a202c; stroke-width: 2; stroke-dasharray: 3 2; }',
    '.whisker { stroke: #1a202c; stroke-width: 1; } .met { fill: #38a169; } .missed { fill: #e53e3e; } .reference { fill: #718096; }',
    '</style>',
    `<rect width="${WIDTH}" height="${height}" fill="#ffffff"/>`,
    text(16, 26, title, 'start', 'title'),
    text(WIDTH - 16, 26, subtitle, 'end', 'axis'),
    ...grid,
    ...body,
    text(16, height - 10, 'Bar: median. Whisker: confidence interval of the median. Dashed line: goal. Green: met. Red: missed. Grey: no goal.', 'start', 'axis'),
    '</svg>',
    '',
  ].join('\n');
}

/** Layout, in SVG pixels: the picture's width, where the bars start, how long 'scaleEnd' is, one bar's row. */
const WIDTH = 860;
const PLOT_LEFT = 330;
const PLOT_WIDTH = 360;
const ROW = 24;

/**
 * @return the SVG elements of one bar whose row starts at `y`
 */
function drawBar(bar: Bar, y: number, x: (ratio: number) => number): string[] {
  const { label, ratio, goal } = bar;
  const middle = y + ROW / 2;
  const status = goal === undefined ? 'reference' : meets(ratio.median, goal) ? 'met' : 'missed';
  const elements = [
    text(PLOT_LEFT - 8, middle + 4, label, 'end'),
    `<rect x="${PLOT_LEFT}" y="${y + 4}" width="${(x(ratio.median) - PLOT_LEFT).toFixed(1)}" height="${ROW - 8}" class="${status}"/>`,
    `<line x1="${x(ratio.low).toFixed(1)}" y1="${middle}" x2="${x(ratio.high).toFixed(1)}" y2="${middle}" class="whisker"/>`,
    ...[ratio.low, ratio.high].map((end) => `<line x1="${x(end).toFixed(1)}" y1="${middle - 4}" x2="${x(end).toFixed(1)}" y2="${middle + 4}" class="whisker"/>`),
  ];
  let value = `${ratio.median.toFixed(2)}×`;
  if (goal !== undefined) {
    elements.push(`<line x1="${x(goal.value).toFixed(1)}" y1="${y + 1}" x2="${x(goal.value).toFixed(1)}" y2="${y + ROW - 1}" class="goal"/>`);
    value += `  (goal ${goal.bound === 'at least' ? '≥' : '≤'} ${goal.value.toFixed(2)}×)`;
  }
  elements.push(text(PLOT_LEFT + PLOT_WIDTH + 12, middle + 4, value, 'start'));
  return elements;
}

/**
 * @return a `<text>` element
 */
function text(x: number, y: number, content: string, anchor: 'start' | 'middle' | 'end', className?: string): string {
  const classAttribute = className === undefined ? '' : ` class="${className}"`;
  return `<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" text-anchor="${anchor}"${classAttribute}>${escape(content)}</text>`;
}

/**
 * @return `content` safe inside SVG text and attributes
 */
function escape(content: string): string {
  return content.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}
