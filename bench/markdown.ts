import type { Summary } from './stats.js';
import type { Target } from './targets.js';

/**
 * @param headings - the header row
 * @param rows - the body, one array of cells per row
 * @return a Markdown table
 */
export function table(headings: readonly string[], rows: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]): string => `| ${cells.join(' | ')} |`;
  return [line(headings), line(headings.map(() => '---')), ...rows.map(line)].join('\n');
}

/**
 * @param value - a ratio or a byte count
 * @param unit - which of the two
 * @return e.g. `0.98×` or `96 bytes`
 */
export function formatValue(value: number, unit: Target['unit']): string {
  return unit === '×' ? `${value.toFixed(2)}×` : `${Math.round(value)} bytes`;
}

/**
 * @param summary - measurements summed up
 * @param unit - `×` or `bytes`
 * @return the confidence interval of the median, e.g. `0.91× – 1.03× (94 %)`
 */
export function formatInterval({ low, high, confidence }: Summary, unit: Target['unit']): string {
  return `${formatValue(low, unit)} – ${formatValue(high, unit)} (${Math.floor(confidence * 100)} %)`;
}

/**
 * @param part - a share of `whole`
 * @param whole - the total
 * @return e.g. `4.2 %`
 */
export function percent(part: number, whole: number): string {
  return `${((100 * part) / whole).toFixed(1)} %`;
}
