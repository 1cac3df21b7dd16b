/**
 * Editor support for slmnb's magics in notebook cells.
 *
 * - A cell whose first line starts with %%finetune is YAML below that line, so the editor switches that cell to
 *   YAML. JupyterLab sets the kernel's language in its own compartment; ours, at the highest precedence, wins the
 *   `language` facet while the cell is a %%finetune cell and is empty otherwise. The switch rides on the
 *   transaction that changes the first line, so there is no extra dispatch.
 * - Lines that call the magics (%%finetune, %finetune, %opt, also as `x = %opt ...`) are marked.
 */
import { Compartment, EditorState, Extension, Prec, RangeSetBuilder, Text } from '@codemirror/state';
import { Decoration, DecorationSet, EditorView } from '@codemirror/view';
import { LanguageSupport } from '@codemirror/language';

const CELL_MAGIC = /^%%finetune\b/;
const LINE_MAGIC = /^\s*(?:[\w.]+\s*=\s*)?(%%?(?:finetune|opt))\b/;

export function isFinetuneCell(doc: Text | string): boolean {
  const first = typeof doc === 'string' ? doc.split('\n', 1)[0] : doc.line(1).text;
  return CELL_MAGIC.test(first);
}

/** The extension for one editor; `source` is the cell's text when the editor is made. */
export function magicExtension(yaml: LanguageSupport | null, source: string): Extension {
  const extensions: Extension[] = [magicLines];
  if (yaml !== null) {
    const language = new Compartment();
    const content = (on: boolean) => (on ? Prec.highest(yaml) : []);
    extensions.push(
      language.of(content(isFinetuneCell(source))),
      EditorState.transactionExtender.of(tr => {
        if (!tr.docChanged) {
          return null;
        }
        const now = isFinetuneCell(tr.newDoc);
        return now === isFinetuneCell(tr.startState.doc) ? null : { effects: language.reconfigure(content(now)) };
      })
    );
  }
  return extensions;
}

const lineMark = Decoration.line({ class: 'cm-slmnb-magicLine' });
const nameMark = Decoration.mark({ class: 'cm-slmnb-magicName' });

function decorate(doc: Text): DecorationSet {
  const builder = new RangeSetBuilder<Decoration>();
  for (let n = 1; n <= doc.lines; n++) {
    const line = doc.line(n);
    const match = LINE_MAGIC.exec(line.text);
    if (match === null || (match[1].startsWith('%%') && n !== 1)) {
      continue; // a cell magic is only a magic on the first line
    }
    const start = line.from + match[0].length - match[1].length;
    builder.add(line.from, line.from, lineMark);
    builder.add(start, start + match[1].length, nameMark);
  }
  return builder.finish();
}

// Cells are short, so decorating the whole document on each change is cheaper than tracking the viewport.
const magicLines = EditorView.decorations.compute(['doc'], state => decorate(state.doc));
