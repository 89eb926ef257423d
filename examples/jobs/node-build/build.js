// Bundle src/*.js into dist/bundle.js with a banner naming the build mode.
const fs = require("fs");
const path = require("path");

const mode = process.env.NODE_ENV || "development";
const sources = fs.readdirSync("src").filter((f) => f.endsWith(".js")).sort();
const body = sources
  .map((f) => `// --- ${f}\n` + fs.readFileSync(path.join("src", f), "utf8"))
  .join("\n");
fs.mkdirSync("dist", { recursive: true });
fs.writeFileSync("dist/bundle.js", `/* built in ${mode} mode */\n${body}`);
console.log(`bundled ${sources.length} file(s) in ${mode} mode`);
