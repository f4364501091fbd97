// The official TypeScript SDK client (@modelcontextprotocol/sdk) driving devbox-mcp over stdio
// with its defaults (60 s request timeout), playing plan.json as plan.py does. `callTool`
// validates each structured result against the tool's output schema and throws when it does not
// match, so a schema/result mismatch fails the run. There is no model here: what a host hands its
// model is the result itself, recorded as {content, structuredContent}.
//
// Usage: node typescript_runner.mjs --server EXE --data-dir DIR --out FILE [--slow]
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const here = dirname(fileURLToPath(import.meta.url));
const opts = {};
for (let i = 2; i < process.argv.length; i++) {
  const key = process.argv[i].replace(/^--/, "");
  opts[key] = key === "slow" ? true : process.argv[++i];
}
// The SDK is installed outside the repository (.tools/frameworks/typescript-sdk, NODE_PATH-free).
const require = createRequire(join(opts.modules, "package.json"));
const { Client } = await import(require.resolve("@modelcontextprotocol/sdk/client/index.js"));
const { StdioClientTransport } = await import(require.resolve("@modelcontextprotocol/sdk/client/stdio.js"));
const sdkVersion = JSON.parse(readFileSync(join(opts.modules, "node_modules/@modelcontextprotocol/sdk/package.json"))).version;

// plan.py, in JavaScript: the same steps, captures, repeats and early stop.
const PLAN = JSON.parse(readFileSync(join(here, "plan.json"), "utf8"));
const steps = PLAN.steps.concat(opts.slow ? PLAN.slow_steps : []);
const calls = [];
const values = {};
let index = -1;
let repeats = 0;
let stopped = null;
const seenAnywhere = (text) => calls.some((c) => (c.seen || "").includes(text));
const fill = (v) => {
  if (Array.isArray(v)) return v.map(fill);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fill(x)]));
  const m = typeof v === "string" && /^\{(\w+)\}$/.exec(v);
  return m && m[1] in values ? values[m[1]] : v;
};
function record(wire, error) {
  const call = calls[calls.length - 1];
  Object.assign(call, { wire, error, seen: JSON.stringify(wire) });
  for (const [name, pattern] of Object.entries(steps[index].capture || {})) {
    const m = new RegExp(pattern).exec(call.seen.replace(/\\"/g, '"'));
    if (m) values[name] = /^\d+$/.test(m[m.length - 1]) ? Number(m[m.length - 1]) : m[m.length - 1];
  }
}
function nextCall() {
  const step = index >= 0 ? steps[index] : null;
  if (step && step.until && repeats < step.repeat && !seenAnywhere(step.until)) {
    repeats += 1;
  } else {
    index += 1;
    repeats = 1;
    while (index < steps.length && steps[index].until && seenAnywhere(steps[index].until)) index += 1;
    if (index >= steps.length) return null;
  }
  const s = steps[index];
  const missing = [...JSON.stringify(s.args).matchAll(/\{(\w+)\}/g)].map((m) => m[1]).filter((n) => !(n in values));
  if (missing.length) {
    stopped = `${s.label}: no ${missing.join(", ")} in what the model saw`;
    return null;
  }
  const call = { label: s.label, tool: s.tool, args: fill(s.args), seen: null, wire: null, error: false };
  calls.push(call);
  return call;
}

const client = new Client({ name: "typescript-sdk-test", version: "1.0.0" });
let failure = null;
try {
  await client.connect(
    new StdioClientTransport({ command: opts.server, args: ["serve", "--data-dir", opts["data-dir"]], stderr: "inherit" }),
  );
  await client.listTools(); // the SDK caches the output schemas it validates results against
  for (let call; (call = nextCall()) !== null; ) {
    const result = await client.callTool({ name: call.tool, arguments: call.args });
    record({ content: result.content, structuredContent: result.structuredContent }, Boolean(result.isError));
  }
} catch (err) {
  failure = String(err && err.stack ? err.stack : err);
} finally {
  await client.close().catch(() => {});
}
writeFileSync(
  opts.out,
  JSON.stringify({ client: { framework: `@modelcontextprotocol/sdk ${sdkVersion}` }, calls, stopped, error: failure }, null, 1),
);
process.exit(failure ? 1 : 0);
