// Validates deploy/forward-auth's Traefik and Envoy Gateway manifests against their CRD
// schemas, as .ci/check_deploy.py validates the Kubernetes ones with kubernetes-validate:
// types, enums and required fields through @kubernetes-models (generated from the projects'
// CRDs), and, like `kubernetes-validate --strict`, no field the schema does not know (read
// from the same packages' type declarations). Kinds without a model here (core Kubernetes
// ones) are left to kubernetes-validate.
//
// Usage: npm ci && node validate.mjs ../traefik.yaml ../envoy-gateway.yaml

import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import * as traefik from '@kubernetes-models/traefik/traefik.io/v1alpha1';
import * as envoyGateway from '@kubernetes-models/envoy-gateway/gateway.envoyproxy.io/v1alpha1';
import * as gatewayApi from '@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

const MODELS = {
  'traefik.io/v1alpha1': ['@kubernetes-models/traefik', 'traefik.io/v1alpha1', traefik],
  'gateway.envoyproxy.io/v1alpha1': ['@kubernetes-models/envoy-gateway', 'gateway.envoyproxy.io/v1alpha1', envoyGateway],
  'gateway.networking.k8s.io/v1': ['@kubernetes-models/gateway-api', 'gateway.networking.k8s.io/v1', gatewayApi],
};

// Interfaces from the packages' .d.ts files: each under its exported, fully qualified alias
// and under its local name within its directory (local names repeat across API versions).
const qualified = new Map();
const local = new Map();
function readDeclarations(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      readDeclarations(path);
      continue;
    }
    if (!entry.name.endsWith('.d.ts')) continue;
    const text = readFileSync(path, 'utf8');
    const here = new Map();
    for (const m of text.matchAll(/^export interface (\w+)(?: extends ([\w, ]+))? \{\n([\s\S]*?)^\}/gm)) {
      const props = {};
      for (const p of m[3].matchAll(/^ {4}"([^"]+)"\??: (.+);$/gm)) props[p[1]] = p[2];
      const parents = (m[2] || '').split(',').map((x) => x.trim()).filter((x) => x && x !== 'TypeMeta');
      const iface = { props, parents, dir };
      here.set(m[1], iface);
      local.set(`${dir}:${m[1]}`, iface);
    }
    for (const m of text.matchAll(/export type \{ ([^}]+) \}/g)) {
      for (const pair of m[1].split(',')) {
        const [from, to] = pair.trim().split(/\s+as\s+/);
        if (to && here.has(from)) qualified.set(to, here.get(from));
      }
    }
  }
}
const roots = {};
for (const [version, [pkg, sub]] of Object.entries(MODELS)) {
  const base = dirname(require.resolve(`${pkg}/package.json`));
  readDeclarations(base);
  roots[version] = join(base, sub);
}

function resolve(name, dir) {
  return qualified.get(name) ?? local.get(`${dir}:${name}`) ?? null;
}

// Every property an interface declares, its parents' included.
function properties(iface) {
  const all = { ...iface.props };
  for (const parent of iface.parents) {
    const p = resolve(parent, iface.dir);
    if (p) Object.assign(all, properties(p));
  }
  return all;
}

// The interface a property's type names, unless it is a map, a primitive or object metadata.
function nested(type, dir) {
  if (type.includes('[key: string]')) return null;
  const m = type.match(/\b(I[A-Z]\w*)\b/);
  if (!m || m[1].includes('ObjectMeta')) return null;
  return resolve(m[1], dir);
}

// Fields of `value` that `iface` does not declare, as paths.
function unknownFields(value, iface, path, out) {
  if (Array.isArray(value)) {
    value.forEach((v, i) => unknownFields(v, iface, `${path}[${i}]`, out));
    return out;
  }
  if (value === null || typeof value !== 'object') return out;
  const props = properties(iface);
  for (const [key, v] of Object.entries(value)) {
    if (!(key in props)) {
      out.push(`${path}.${key}`);
      continue;
    }
    const inner = nested(props[key], iface.dir);
    if (inner) unknownFields(v, inner, `${path}.${key}`, out);
  }
  return out;
}

let failures = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  const docs = parseAllDocuments(readFileSync(file, 'utf8'));
  for (const doc of docs) {
    if (doc.errors.length) {
      console.log(`FAIL ${file}: ${doc.errors[0].message}`);
      failures++;
      continue;
    }
    const obj = doc.toJS();
    if (!obj) continue;
    const where = `${file}: ${obj.kind}/${obj.metadata?.name}`;
    const model = MODELS[obj.apiVersion];
    const Kind = model?.[2][obj.kind];
    if (!Kind) {
      console.log(`skip ${where} (${obj.apiVersion}: kubernetes-validate's)`);
      continue;
    }
    try {
      new Kind(obj).validate();
    } catch (e) {
      console.log(`FAIL ${where}: ${e.message}`);
      failures++;
      continue;
    }
    const root = resolve(`I${obj.kind}`, roots[obj.apiVersion]);
    if (!root) {
      console.log(`FAIL ${where}: no declaration of ${obj.kind} to check its fields against`);
      failures++;
      continue;
    }
    const unknown = unknownFields(obj, root, obj.kind, []);
    if (unknown.length) {
      console.log(`FAIL ${where}: unknown fields ${unknown.join(', ')}`);
      failures++;
      continue;
    }
    console.log(`ok   ${where}: valid against ${model[0]} (${model[1]}), no unknown field`);
    checked++;
  }
}
// The checker must be able to fail: a field no schema has is refused.
const probe = unknownFields(
  { spec: { forwardAuth: { address: 'x', adress: 'y' } } },
  resolve('IMiddleware', roots['traefik.io/v1alpha1']),
  'Middleware',
  [],
);
if (probe.join() !== 'Middleware.spec.forwardAuth.adress') {
  console.log(`FAIL self-test: an unknown field was not found (${probe.join()})`);
  failures++;
}
if (failures || !checked) {
  console.log(`${failures} manifest(s) failed, ${checked} checked`);
  process.exit(1);
}
console.log(`forward-auth manifests: ${checked} valid`);
