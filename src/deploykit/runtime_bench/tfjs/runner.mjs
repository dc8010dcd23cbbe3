// deploykit's TF.js runner: loads one graph model and verifies / benchmarks it.
//
// Protocol: one JSON object per line on stdin, one JSON reply per line on stdout,
// strictly in order. Every reply has "ok": true or "error": "<one line>"; a failing
// request never ends the process. The process exits on {"cmd": "close"} or when
// stdin closes (the Python side went away), so it cannot outlive its parent for long.
//
//   {"cmd": "load", "model_json_path": "...", "backend": "wasm"|"cpu", "threads": 1}
//   {"cmd": "set",  "inputs": {name: {shape, dtype, data: base64 little-endian}}}
//   {"cmd": "run",  "inputs": {...}}      (inputs optional: reuses the last ones)
//   {"cmd": "bench", "warmup": 10, "iterations": 100}
//   {"cmd": "memory"}   {"cmd": "close"}
//
// Timing is taken here with performance.now() around execute + reading the outputs
// back (dataSync), so the pipe to Python is never inside a sample.

import { createRequire } from 'node:module';
import { readFileSync, realpathSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

// Libraries may print (TF.js greets Node users, Emscripten warns): stdout is the
// protocol channel, so everything written through console goes to stderr.
const writeOut = process.stdout.write.bind(process.stdout);
for (const level of ['log', 'info', 'warn', 'debug', 'trace']) {
  console[level] = (...args) => console.error(...args);
}

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
// The parts, not the @tensorflow/tfjs umbrella: half the start-up time, and no
// WebGL backend that cannot work in Node anyway. package-lock.json pins all of them.
const tf = require('@tensorflow/tfjs-core');
require('@tensorflow/tfjs-backend-cpu');
const tfconv = require('@tensorflow/tfjs-converter');
const tfwasm = require('@tensorflow/tfjs-backend-wasm');

const WASM_DIST = path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist') + path.sep;
const DTYPE_BYTES = { float32: 4, int32: 4, bool: 1, complex64: 8 };
const QUANT_BYTES = { uint8: 1, uint16: 2, float16: 2 };
const ARRAYS = { float32: Float32Array, int32: Int32Array, bool: Uint8Array };

const state = { model: null, inputs: null, outputs: null, feed: null, async: false, info: null, warmPending: false,
  rssBeforeModel: null };

function oneLine(err) {
  const msg = err instanceof Error ? err.message : (err && err.message) || String(err);
  return msg.replace(/\s+/g, ' ').trim().slice(0, 500) || 'unknown error';
}

function reply(obj) {
  writeOut(JSON.stringify(obj) + '\n');
}

// ----------------------------------------------------------------------------- loading

/** Weight shard files of a manifest, resolved inside the model's directory. */
function shardPaths(manifest, modelDir) {
  const base = realpathSync(modelDir);
  const out = [];
  for (const group of manifest) {
    for (const p of group.paths || []) {
      if (typeof p !== 'string' || p === '' || path.isAbsolute(p) || /^[a-z][a-z0-9+.-]*:/i.test(p)) {
        throw new Error(`weight shard path ${JSON.stringify(p)} is not a relative file name; refused`);
      }
      const full = path.resolve(base, p);
      const rel = path.relative(base, full);
      if (rel.startsWith('..') || path.isAbsolute(rel)) {
        throw new Error(`weight shard path ${JSON.stringify(p)} leaves the model's directory; refused`);
      }
      let real;
      try {
        real = realpathSync(full);
      } catch (e) {
        throw new Error(`weight shard ${JSON.stringify(p)} listed in model.json is missing (${full})`);
      }
      const realRel = path.relative(base, real);
      if (realRel.startsWith('..') || path.isAbsolute(realRel)) {
        throw new Error(`weight shard path ${JSON.stringify(p)} is a link leaving the model's directory; refused`);
      }
      out.push(real);
    }
  }
  return out;
}

/** Bytes the weight specs need, or null when a string weight makes it unknowable up front. */
function expectedWeightBytes(specs) {
  let total = 0;
  for (const s of specs) {
    const size = (s.shape || []).reduce((a, b) => a * b, 1);
    if (s.quantization) {
      const q = QUANT_BYTES[s.quantization.dtype];
      if (q == null) throw new Error(`weight ${s.name}: unknown quantization dtype ${JSON.stringify(s.quantization.dtype)} (uint8, uint16, float16)`);
      total += size * q;
    } else if (s.dtype === 'string') {
      return null;
    } else if (DTYPE_BYTES[s.dtype] != null) {
      total += size * DTYPE_BYTES[s.dtype];
    } else {
      throw new Error(`weight ${s.name}: unsupported dtype ${JSON.stringify(s.dtype)} (float32, int32, bool, string, complex64)`);
    }
  }
  return total;
}

function fileHandler(modelJsonPath) {
  return {
    load: async () => {
      let modelJSON;
      try {
        modelJSON = JSON.parse(readFileSync(modelJsonPath, 'utf8'));
      } catch (e) {
        throw new Error(`${path.basename(modelJsonPath)} is not valid JSON: ${oneLine(e)}`);
      }
      if (modelJSON === null || typeof modelJSON !== 'object' || modelJSON.modelTopology == null) {
        throw new Error(`${path.basename(modelJsonPath)} has no modelTopology; not a TF.js model.json`);
      }
      if (modelJSON.format != null && modelJSON.format !== 'graph-model') {
        throw new Error(`${path.basename(modelJsonPath)} has format ${JSON.stringify(modelJSON.format)}; only graph-model is supported`);
      }
      if (modelJSON.modelTopology.node == null || modelJSON.modelTopology.versions == null) {
        throw new Error(`${path.basename(modelJsonPath)}: modelTopology is not a GraphDef (needs node and versions)`);
      }
      const dir = path.dirname(modelJsonPath);
      return tf.io.getModelArtifactsForJSON(modelJSON, async (manifest) => {
        const files = shardPaths(manifest, dir);
        const specs = tf.io.getWeightSpecs(manifest);
        const buffers = files.map((f) => readFileSync(f));
        const total = buffers.reduce((a, b) => a + b.byteLength, 0);
        const need = expectedWeightBytes(specs);
        if (need != null && need !== total) {
          throw new Error(`weight shards hold ${total} bytes but the manifest's ${specs.length} weights need ${need}`);
        }
        const data = new Uint8Array(total);
        let offset = 0;
        for (const b of buffers) { data.set(b, offset); offset += b.byteLength; }
        return [specs, data.buffer];
      });
    },
  };
}

function nodeName(tensorName) {
  // "dense/BiasAdd:0" -> node "dense/BiasAdd"; other output indices stay ("split:1").
  return tensorName.endsWith(':0') ? tensorName.slice(0, -2) : tensorName;
}

function sigShape(info) {
  const dims = info && info.tensorShape && info.tensorShape.dim;
  if (!dims) return info && info.tensorShape && info.tensorShape.unknownRank ? null : (info && info.tensorShape ? [] : null);
  return dims.map((d) => (d.size == null ? -1 : Number(d.size)));
}

const SIG_DTYPES = { DT_FLOAT: 'float32', DT_HALF: 'float32', DT_DOUBLE: 'float32', DT_INT32: 'int32',
  DT_INT64: 'int32', DT_INT8: 'int32', DT_UINT8: 'int32', DT_INT16: 'int32', DT_BOOL: 'bool', DT_STRING: 'string' };

function describeIO(model) {
  const sig = model.modelSignature || {};
  const sigIn = sig.inputs && Object.keys(sig.inputs).length ? sig.inputs : null;
  const sigOut = sig.outputs && Object.keys(sig.outputs).length ? sig.outputs : null;
  const ins = model.inputs; // executor nodes: {name: node name, shape, dtype} in inputNodes order
  const inputs = model.inputNodes.map((key, i) => {
    const info = sigIn ? sigIn[key] : null;
    let shape = ins[i] && ins[i].shape ? ins[i].shape.map(Number) : null;
    if (shape == null && info) shape = sigShape(info);
    const dtype = (ins[i] && ins[i].dtype) || (info && SIG_DTYPES[info.dtype]) || 'float32';
    return { name: key, node: info ? nodeName(info.name) : ins[i].name, shape, dtype };
  });
  const outputs = model.outputNodes.map((key) => {
    const info = sigOut ? sigOut[key] : null;
    return { name: key, node: info ? nodeName(info.name) : key };
  });
  return { inputs, outputs, signature: Boolean(sigIn || sigOut) };
}

async function setBackend(backend, threads) {
  if (backend === 'wasm') {
    if (tf.findBackend('wasm') == null || tf.getBackend() !== 'wasm') {
      // Both must happen before the wasm backend initialises (once per process).
      tfwasm.setWasmPaths(WASM_DIST);
      if (threads > 0) tfwasm.setThreadsCount(threads);
    }
  } else if (backend !== 'cpu') {
    throw new Error(`backend ${JSON.stringify(backend)} is not available in Node; use wasm or cpu`);
  }
  const ok = await tf.setBackend(backend);
  await tf.ready();
  if (!ok || tf.getBackend() !== backend) {
    throw new Error(`TF.js could not initialise the ${backend} backend (active: ${tf.getBackend()})`);
  }
  const info = { backend: tf.getBackend(), threads: 1 };
  if (backend === 'wasm') {
    info.threads = tfwasm.getThreadsCount();
    info.wasm_simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
    info.wasm_multithread = await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT');
    info.wasm_binary = info.wasm_simd && info.wasm_multithread ? 'tfjs-backend-wasm-threaded-simd.wasm'
      : info.wasm_simd ? 'tfjs-backend-wasm-simd.wasm' : 'tfjs-backend-wasm.wasm';
  }
  return info;
}

function zerosFor(inp) {
  const shape = (inp.shape || []).map((d) => (d < 0 ? 1 : d));
  return tf.zeros(shape, inp.dtype === 'string' ? 'float32' : inp.dtype);
}

function disposeFeed() {
  if (state.feed) tf.dispose(Object.values(state.feed));
  state.feed = null;
}

/** One inference; returns output tensors in state.outputs order. */
async function execute(feed) {
  const names = state.outputs.map((o) => o.node);
  let res;
  if (state.async) {
    res = await state.model.executeAsync(feed, names);
  } else {
    res = state.model.execute(feed, names);
  }
  return Array.isArray(res) ? res : [res];
}

const NEEDS_ASYNC = /executeAsync/;

async function firstRun(feed) {
  try {
    return await execute(feed);
  } catch (e) {
    if (!state.async && NEEDS_ASYNC.test(oneLine(e))) {
      state.async = true; // control flow / dynamic-shape / hash-table ops
      return execute(feed);
    }
    throw e;
  }
}

async function cmdLoad(req) {
  const t0 = performance.now();
  const modelPath = path.resolve(String(req.model_json_path || ''));
  try {
    if (!statSync(modelPath).isFile()) throw new Error('not a file');
  } catch (e) {
    throw new Error(`model.json not found: ${modelPath}`);
  }
  if (state.model) { state.model.dispose(); state.model = null; }
  disposeFeed();
  state.async = false;
  const backend = req.backend || 'wasm';
  const info = await setBackend(backend, Number(req.threads || 0));
  const t1 = performance.now();
  // The memory figure targets are compared by (memory_probe.py): what the model adds to a process
  // that has TF.js and its backend ready. For it the kernel's peak is reset here (Linux clear_refs 5),
  // so start-up (the wasm compile) is not taken for the model's peak; otherwise the peak stays the
  // whole process's, what a deployment provisions.
  if (req.reset_peak) { try { writeFileSync('/proc/self/clear_refs', '5'); } catch (e) { /* not Linux */ } }
  state.rssBeforeModel = process.memoryUsage().rss;
  const model = await tfconv.loadGraphModel(fileHandler(modelPath));
  state.model = model;
  const t2 = performance.now();
  const io = describeIO(model);
  state.inputs = io.inputs;
  state.outputs = io.outputs;
  // Warm once: kernels compile / XNNPACK packs weights on the first call. Not when a
  // non-batch dimension is unknown (e.g. images of any size): no zeros shape is known to be
  // valid (1x1 through a 3x3 VALID conv is negative), so the first real run warms instead.
  state.warmPending = io.inputs.some((inp) => (inp.shape || []).slice(1).some((d) => d == null || d < 0));
  if (!state.warmPending) {
    const feed = {};
    for (const inp of io.inputs) feed[inp.node] = zerosFor(inp);
    try {
      const outs = await firstRun(feed);
      for (const t of outs) t.dataSync();
      tf.dispose(outs);
    } finally {
      tf.dispose(Object.values(feed));
    }
  }
  const t3 = performance.now();
  state.info = info;
  return {
    // init_ms is the model's load, as every runtime's is: the backend's start-up (backend_init_ms,
    // the import of the other runtimes) and the first run (warm_ms: kernels compile, weights pack)
    // are their own figures.
    init_ms: t2 - t1, backend_init_ms: t1 - t0, load_ms: t2 - t1, warm_ms: t3 - t2,
    inputs: io.inputs, outputs: io.outputs, has_signature: io.signature,
    execution: state.async ? 'executeAsync' : 'execute',
    ...info,
    tfjs_version: tf.version_core, converter_version: tfconv.version_converter,
    node_version: process.versions.node, v8_version: process.versions.v8,
    num_tensors: tf.memory().numTensors,
  };
}

function decodeInput(name, spec) {
  const dtype = spec.dtype || 'float32';
  const Arr = ARRAYS[dtype];
  if (!Arr) throw new Error(`input ${name}: dtype ${dtype} not supported (float32, int32, bool)`);
  const buf = Buffer.from(String(spec.data || ''), 'base64');
  const shape = (spec.shape || []).map(Number);
  const size = shape.reduce((a, b) => a * b, 1);
  if (buf.byteLength !== size * Arr.BYTES_PER_ELEMENT) {
    throw new Error(`input ${name}: ${buf.byteLength} bytes of data for shape [${shape}] ${dtype} (needs ${size * Arr.BYTES_PER_ELEMENT})`);
  }
  // Copy into an aligned buffer (Buffer slices may start at any offset).
  const values = new Arr(size);
  new Uint8Array(values.buffer).set(buf);
  return tf.tensor(values, shape, dtype);
}

function requireModel() {
  if (!state.model) throw new Error('no model loaded; send a load request first');
}

function cmdSet(req) {
  requireModel();
  const given = req.inputs || {};
  const missing = state.inputs.filter((i) => !(i.name in given)).map((i) => i.name);
  const extra = Object.keys(given).filter((k) => !state.inputs.some((i) => i.name === k));
  if (missing.length || extra.length) {
    throw new Error(`model takes inputs [${state.inputs.map((i) => i.name)}]; got [${Object.keys(given)}]`);
  }
  const feed = {};
  try {
    for (const inp of state.inputs) feed[inp.node] = decodeInput(inp.name, given[inp.name]);
  } catch (e) {
    tf.dispose(Object.values(feed));
    throw e;
  }
  disposeFeed();
  state.feed = feed;
  return { num_tensors: tf.memory().numTensors };
}

function encodeOutput(t) {
  let dtype = t.dtype;
  let values = t.dataSync();
  if (dtype === 'bool') { values = Uint8Array.from(values); }
  else if (dtype !== 'float32' && dtype !== 'int32') { values = Float32Array.from(values); dtype = 'float32'; }
  // The cpu backend's int32 -> float32 Cast relabels the tensor and keeps its Int32Array: its bytes
  // sent as float32 read 1 as 1e-45 (a right file failed verification). The values are what count.
  else if (dtype === 'float32' && !(values instanceof Float32Array)) { values = Float32Array.from(values); }
  else if (dtype === 'int32' && !(values instanceof Int32Array)) { values = Int32Array.from(values); }
  const data = Buffer.from(values.buffer, values.byteOffset, values.byteLength).toString('base64');
  return { shape: t.shape, dtype, data };
}

async function cmdRun(req) {
  requireModel();
  if (req.inputs) cmdSet(req);
  if (!state.feed) throw new Error('no inputs set; send inputs with run or set first');
  const outs = state.warmPending ? await firstRun(state.feed) : await execute(state.feed);
  state.warmPending = false;
  try {
    const outputs = {};
    state.outputs.forEach((o, i) => { outputs[o.name] = encodeOutput(outs[i]); });
    return { outputs };
  } finally {
    tf.dispose(outs);
  }
}

async function cmdBench(req) {
  requireModel();
  if (!state.feed) throw new Error('no inputs set; send inputs with run or set first');
  const warmup = Math.max(0, Number(req.warmup ?? 10));
  const iterations = Number(req.iterations ?? 100);
  if (!(iterations >= 1)) throw new Error(`iterations must be >= 1, got ${req.iterations}`);
  if (state.warmPending) { // decide execute vs executeAsync on the real inputs, untimed
    const outs = await firstRun(state.feed);
    for (const t of outs) t.dataSync();
    tf.dispose(outs);
    state.warmPending = false;
  }
  const before = tf.memory().numTensors;
  const samples = new Array(iterations);
  const feed = state.feed;
  for (let i = 0; i < warmup + iterations; i++) {
    const t0 = performance.now();
    const outs = state.async ? await execute(feed) : execute_sync(feed);
    for (const t of outs) t.dataSync();
    const dt = performance.now() - t0;
    tf.dispose(outs);
    if (i >= warmup) samples[i - warmup] = dt;
  }
  return { samples_ms: samples, warmup, iterations, leaked_tensors: tf.memory().numTensors - before };
}

function execute_sync(feed) {
  // The synchronous path without an await: no microtask hop inside the timed region.
  const res = state.model.execute(feed, state.outputs.map((o) => o.node));
  return Array.isArray(res) ? res : [res];
}

function peakRss() {
  // The process's peak resident memory, what a deployment has to provision. On Linux the kernel's
  // high-water mark (VmHWM): getrusage's maxRSS, which process.resourceUsage() reads, starts from the
  // parent's peak when Python forks Node (measured: 504 MB reported for a 39 MB process).
  try {
    const match = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (match) return Number(match[1]) * 1024;
  } catch (e) { /* not Linux: maxRSS below */ }
  return process.resourceUsage().maxRSS * 1024;
}

function cmdMemory() {
  const m = process.memoryUsage();
  const t = tf.memory();
  return { rss: m.rss, peak_rss: peakRss(), rss_before_model: state.rssBeforeModel, heap_total: m.heapTotal, heap_used: m.heapUsed, external: m.external,
    array_buffers: m.arrayBuffers, tf_num_tensors: t.numTensors, tf_num_bytes: t.numBytes,
    wasm_memory_bytes: tf.getBackend() === 'wasm' ? tf.backend().wasm.HEAPU8.byteLength : null };
}

const HANDLERS = { load: cmdLoad, set: cmdSet, run: cmdRun, bench: cmdBench, memory: cmdMemory };

async function handle(line) {
  let req;
  try {
    req = JSON.parse(line);
  } catch (e) {
    return { error: `request is not JSON: ${oneLine(e)}` };
  }
  const id = req && req.id;
  try {
    if (req.cmd === 'close') {
      if (state.model) state.model.dispose();
      return { id, ok: true, close: true };
    }
    const fn = HANDLERS[req.cmd];
    if (!fn) throw new Error(`unknown command ${JSON.stringify(req.cmd)}; known: ${Object.keys(HANDLERS).join(', ')}, close`);
    return { id, ok: true, ...(await fn(req)) };
  } catch (e) {
    return { id, error: oneLine(e) };
  }
}

function main() {
  // Nobody left to answer (the parent died or closed the pipe): exit. Without this an
  // EPIPE would reach the uncaught handler below, whose reply fails again, forever.
  process.stdout.on('error', () => process.exit(0));
  // An exception escaping a handler (e.g. from an Emscripten callback) must still
  // leave a JSON error on the channel, not kill the protocol.
  const uncaught = (prefix) => (e) => {
    if ((e && e.code === 'EPIPE') || process.stdout.destroyed || !process.stdout.writable) process.exit(0);
    reply({ error: `${prefix}: ${oneLine(e)}` });
  };
  process.on('uncaughtException', uncaught('uncaught'));
  process.on('unhandledRejection', uncaught('unhandled rejection'));
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  let chain = Promise.resolve();
  rl.on('line', (line) => {
    if (!line.trim()) return;
    chain = chain.then(async () => {
      const res = await handle(line);
      reply(res);
      if (res.close) process.exit(0);
    });
  });
  rl.on('close', () => { chain.then(() => process.exit(0)); });
  reply({ ok: true, ready: true, pid: process.pid, tfjs_version: tf.version_core, node_version: process.versions.node });
}

main();
