#!/usr/bin/env node
// Ember LOOP adapter for Node.js (docs/loop-protocol.md). No dependencies.
//
//   WATCHDOG_CMD="node /path/ember-loop.js /app/handler.js [exportName]"
//
// Loads the module once, then for each request line on stdin calls its
// exported `handle(request, context)` (sync or async) and writes one result
// line to fd 3. stdout and stderr (console.log, console.error) are logs.
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { pathToFileURL } = require('url');

const RESULT_FD = 3;

async function load(target, name) {
  const file = path.resolve(target);
  let mod;
  try {
    mod = require(file);
  } catch (err) {
    // An ES module cannot be required on every Node version: import it.
    if (err && err.code === 'ERR_REQUIRE_ESM') {
      mod = await import(pathToFileURL(file).href);
    } else {
      throw err;
    }
  }
  let fn = mod && mod[name];
  if (typeof fn !== 'function' && mod && mod.default) fn = mod.default[name] || mod.default;
  if (typeof fn !== 'function' && typeof mod === 'function') fn = mod;
  if (typeof fn !== 'function') {
    throw new Error(`${target} exports no function "${name}"`);
  }
  return fn;
}

// Blocking write of the whole line: fd 3 is a blocking pipe, but a write
// may still be cut short (a signal), so loop until all of it is out.
function writeResult(result) {
  const buf = Buffer.from(JSON.stringify(result) + '\n', 'utf8');
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(RESULT_FD, buf, off, buf.length - off);
    } catch (err) {
      if (err.code !== 'EAGAIN' && err.code !== 'EINTR') throw err;
    }
  }
}

function errorResult(id, err) {
  const code = err && typeof err.code === 'string' && err.code ? err.code : 'HANDLER_ERROR';
  const message = err && err.message !== undefined ? String(err.message) : String(err);
  return { id, error: { code, message } };
}

async function serve(handle, line) {
  if (!line.trim()) return;
  const req = JSON.parse(line); // the watchdog only sends valid lines
  const context = {
    execution_id: req.id,
    trace_id: req.trace_id === undefined ? null : req.trace_id,
    deadline_ms: req.deadline_ms,
    remaining_ms() {
      return Math.max(0, this.deadline_ms - Date.now());
    },
  };
  let result;
  try {
    const output = await handle(req.payload, context);
    result = { id: req.id, output: output === undefined ? null : output };
    JSON.stringify(result); // BigInt, cycles: fail here, not in writeResult
  } catch (err) {
    if (result !== undefined) {
      result = { id: req.id, error: { code: 'OUTPUT_SERIALIZATION_ERROR', message: String(err.message) } };
    } else {
      if (err && err.stack) console.error(err.stack);
      result = errorResult(req.id, err);
    }
  }
  writeResult(result);
}

async function main() {
  const [target, name = 'handle'] = process.argv.slice(2);
  if (!target) {
    console.error('usage: node ember-loop.js /path/to/handler.js [exportName]');
    process.exit(2);
  }
  const handle = await load(target, name);
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  // The watchdog sends the next line only after this one's answer; the
  // chain keeps answers in order even if a client of the protocol did not.
  let chain = Promise.resolve();
  rl.on('line', (line) => {
    chain = chain.then(() => serve(handle, line));
  });
  rl.on('close', () => chain.then(() => process.exit(0)));
}

main().catch((err) => {
  console.error('ember-loop: ' + (err && err.stack ? err.stack : err));
  process.exit(1);
});
