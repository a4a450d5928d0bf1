// Summarises a V8 .cpuprofile (node --cpu-prof): top self-time functions (function + file) and self time
// by package / source area, as markdown.
//   node --import tsx bench/cpuprofile-summary.ts <file.cpuprofile> [source root] [top N]
import { profileMarkdown, summarise } from './lib/profile.ts';

const [file, root = process.cwd(), top = '25'] = process.argv.slice(2);
if (!file) {
  console.error('usage: node --import tsx bench/cpuprofile-summary.ts <file.cpuprofile> [source root] [top N]');
  process.exit(64);
}
console.log(profileMarkdown(summarise(file, root), Number(top)));
