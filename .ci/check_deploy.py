#!/usr/bin/env python3
"""Checks the deployment material in deploy/ the way a cluster and a container would use it.

1. Renders each kustomization (deploy/kubernetes/overlays/example, deploy/kubernetes/gateway)
   with `kubectl kustomize` and validates every object against the Kubernetes OpenAPI schemas
   (`kubernetes-validate --strict`, which rejects unknown fields).
2. Checks what the schemas cannot: every tollgate container has the liveness/readiness probes on
   /healthz and /readyz, the hardened securityContext, the config mounted where the image's CMD
   reads it (/etc/tollgate/tollgate.toml, as in deploy/Dockerfile), secrets mounted as files
   where the config's *_file keys point (after the container's TOLLGATE__ overrides), no secret
   inline (client_secret, session keys, the store URL, which may carry a password), a [store]
   wherever more than one replica can run (Deployment replicas or HPA maxReplicas > 1: one
   refresh per refresh token across replicas, logouts enforced by all), a [store] wherever
   `[session] storage = "store"` meets more than one replica or any HPA (without [store] the
   sessions live in one replica's memory), a known [session] storage ("cookie" or "store"), and
   a termination grace period that covers the preStop pause plus tollgate's [server]
   grace_period. The rules on replicas and the store test themselves first (self_test()) on
   small manifests written here.
3. Runs `tollgate check` (the binary given as argv[1]) on each rendered tollgate.toml, with the
   Deployment's TOLLGATE__ environment overrides and the Secret's files, so a config we ship that
   the binary would refuse fails here, not at someone's rollout.

Usage: check_deploy.py PATH/TO/tollgate
       check_deploy.py --self-test     (the rules' self-tests only; no binary, no kubectl)
"""
import base64
import copy
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.32.0"
KUSTOMIZATIONS = ["deploy/kubernetes/overlays/example", "deploy/kubernetes/gateway"]
CONFIG_PATH = "/etc/tollgate/tollgate.toml"
FAILURES = []


def fail(where, problem):
    FAILURES.append(f"{where}: {problem}")
    print(f"FAIL {where}: {problem}")


def seconds(text):
    """A humantime duration as tollgate's config uses ("20s", "1m", "1h30m")."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total = 0.0
    for number, unit in re.findall(r"(\d+)\s*(ms|s|m|h|d)", text):
        total += int(number) * units[unit]
    return total


def with_env_overrides(config, container):
    """The config as tollgate reads it: the container's TOLLGATE__SECTION__KEY variables applied
    as src/config/env.rs applies them (lower-cased segments, numeric ones index arrays, a value
    starting with [ or { read as TOML)."""
    config = copy.deepcopy(config)
    for e in container.get("env", []):
        name, raw = e["name"], e.get("value")
        if not name.startswith("TOLLGATE__") or raw is None:
            continue
        raw = str(raw)
        path = [s.lower() for s in name[len("TOLLGATE__"):].split("__")]
        value = tomllib.loads(f"v = {raw}")["v"] if raw.lstrip()[:1] in ("[", "{") else raw
        node = config
        for i, seg in enumerate(path):
            last = i == len(path) - 1
            key = int(seg) if isinstance(node, list) else seg
            if isinstance(node, list) and key == len(node):
                node.append({})
            if last:
                node[key] = value
            else:
                if isinstance(node, dict) and key not in node:
                    node[key] = [] if path[i + 1].isdigit() else {}
                node = node[key]
    return config


def render(path):
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / path)], check=True, capture_output=True, text=True
    ).stdout
    return out, [d for d in yaml.safe_load_all(out) if d]


def validate_schemas(path, rendered):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(rendered)
    r = subprocess.run(
        ["kubernetes-validate", "-k", K8S_VERSION, "--strict", "--quiet", f.name],
        capture_output=True,
        text=True,
    )
    os.unlink(f.name)
    output = (r.stdout + r.stderr).strip()
    if r.returncode != 0 or "ERROR" in output:
        fail(path, f"schema validation against Kubernetes {K8S_VERSION}:\n{output}")
    else:
        print(f"ok   {path}: every object valid against Kubernetes {K8S_VERSION} (strict)")


def check_tollgate_pod(path, docs, binary):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    for kind in ["Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler"]:
        if kind not in by_kind:
            fail(path, f"no {kind}")
    for dep in by_kind.get("Deployment", []):
        spec = dep["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        tg = next((c for c in spec["containers"] if c["name"] == "tollgate"), None)
        if tg is None:
            fail(path, "the Deployment has no container named tollgate")
            continue
        where = f"{path} Deployment/{dep['metadata']['name']} container tollgate"
        probes = {
            "livenessProbe": "/healthz",
            "readinessProbe": "/readyz",
        }
        for probe, want in probes.items():
            got = tg.get(probe, {}).get("httpGet", {}).get("path")
            if got != want:
                fail(where, f"{probe} path is {got!r}, want {want}")
        sc = tg.get("securityContext", {})
        for key, want in [
            ("runAsNonRoot", True),
            ("readOnlyRootFilesystem", True),
            ("allowPrivilegeEscalation", False),
        ]:
            if sc.get(key) is not want:
                fail(where, f"securityContext.{key} must be {want}")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            fail(where, "securityContext.capabilities.drop must include ALL")
        if "resources" not in tg or "limits" not in tg["resources"]:
            fail(where, "resources.limits missing")
        args = tg.get("args", [])
        if args != ["--config", CONFIG_PATH]:
            fail(where, f"args {args}, want ['--config', '{CONFIG_PATH}'] (the image's CMD)")

        mounts = {m["mountPath"]: m for m in tg.get("volumeMounts", [])}
        config_mount = mounts.get(os.path.dirname(CONFIG_PATH))
        if not config_mount:
            fail(where, f"nothing mounted at {os.path.dirname(CONFIG_PATH)}")
            continue
        cm_name = volumes[config_mount["name"]]["configMap"]["name"]
        cm = next((c for c in by_kind.get("ConfigMap", []) if c["metadata"]["name"] == cm_name), None)
        if not cm or "tollgate.toml" not in cm.get("data", {}):
            fail(where, f"ConfigMap {cm_name} with tollgate.toml not rendered")
            continue
        toml_text = cm["data"]["tollgate.toml"]
        config = with_env_overrides(tomllib.loads(toml_text), tg)

        # Secrets as files, where the config's *_file keys point.
        secret_files = {}
        for m in tg.get("volumeMounts", []):
            vol = volumes.get(m["name"], {})
            if "secret" in vol:
                secret_files[m["mountPath"]] = vol["secret"]["secretName"]
        file_keys = [
            ("oidc", "client_secret_file"),
            ("oidc", "private_key_file"),
            ("session", "keys_file"),
            ("store", "url_file"),
        ]
        for section, key in file_keys:
            value = config.get(section, {}).get(key)
            if value and os.path.dirname(value) not in secret_files:
                fail(where, f"{section}.{key} = {value} is not under a mounted Secret")
        for section, key in [("oidc", "client_secret"), ("session", "keys"), ("store", "url")]:
            if key in config.get(section, {}):
                fail(where, f"{section}.{key} is inline in the manifests; use {key}_file and a Secret")

        for problem in replica_store_problems(dep, by_kind.get("HorizontalPodAutoscaler", []), config):
            fail(where, problem)

        grace = seconds(config.get("server", {}).get("grace_period", "0s"))
        pre_stop = tg.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        termination = spec.get("terminationGracePeriodSeconds", 30)
        if termination < pre_stop + grace + 1:
            fail(
                where,
                f"terminationGracePeriodSeconds {termination} < preStop {pre_stop} s + grace_period {grace} s + 1",
            )
        listen = config["server"]["listen"]
        listen = [listen] if isinstance(listen, str) else listen
        listen_ports = {int(a.rsplit(":", 1)[1]) for a in listen}
        container_ports = {p["containerPort"] for p in tg.get("ports", [])}
        if not listen_ports <= container_ports:
            fail(where, f"listen ports {listen_ports} not all declared as containerPorts {container_ports}")
        if any(a.startswith("127.") for a in listen):
            fail(where, "listen on loopback is unreachable from the Service")

        run_tollgate_check(where, binary, toml_text, tg, secret_files, by_kind.get("Secret", []))


SESSION_STORAGES = ("cookie", "store")


def replica_store_problems(dep, hpas, config):
    """What is wrong with this Deployment's replicas (its own and its HPAs') for this config
    (env overrides applied), as a list of messages (empty: nothing)."""
    problems = []
    name = dep["metadata"]["name"]
    own_hpas = [
        h
        for h in hpas
        if h["spec"]["scaleTargetRef"].get("kind") == "Deployment"
        and h["spec"]["scaleTargetRef"]["name"] == name
    ]
    replicas = dep["spec"].get("replicas", 1)
    most = max([replicas] + [h["spec"]["maxReplicas"] for h in own_hpas])
    has_store = "store" in config
    # Several replicas act as one only through [store]: one refresh per refresh token (a
    # provider that rotates them revokes the grant on reuse) and logouts enforced by all.
    if most > 1 and not has_store:
        problems.append(f"up to {most} replicas but no [store]: refreshes and logouts are per replica")
    # Server-side sessions: without [store] they are kept in the process's own memory, so a
    # second replica (or the next one an HPA starts) does not know them and sends the user to
    # log in again. Any HPA counts: it exists to change the number of replicas.
    storage = config.get("session", {}).get("storage", "cookie")
    if storage not in SESSION_STORAGES:
        problems.append(
            f"[session] storage = {storage!r} is unknown; want one of {', '.join(map(repr, SESSION_STORAGES))}"
        )
    elif storage == "store" and not has_store and (replicas > 1 or own_hpas):
        why = f"{replicas} replicas" if replicas > 1 else f"HorizontalPodAutoscaler/{own_hpas[0]['metadata']['name']}"
        problems.append(
            f'[session] storage = "store" without [store] ({why}): sessions in the in-process store '
            "live on one replica only (another replica does not know them; a restart loses them); "
            "add [store] (Redis), or run replicas: 1 with no HPA"
        )
    return problems


def self_test():
    """The rules of replica_store_problems() on small manifests: each case writes a Deployment,
    an optional HPA and a tollgate.toml into a temp dir, reads them back as check_tollgate_pod
    sees them (YAML documents, TOML) and compares the problems found with the ones expected."""
    store_section = '[store]\nurl_file = "/etc/tollgate/secrets/store_url"\n'
    cases = [
        # (name, Deployment replicas, HPA maxReplicas or None, tollgate.toml, expected substrings)
        ("cookie, 1 replica, no store", 1, None, "[session]\n", []),
        ("cookie, 2 replicas, no store", 2, None, "[session]\n", ["up to 2 replicas but no [store]"]),
        ("cookie, 2 replicas, store", 2, 10, "[session]\n" + store_section, []),
        ("store, 3 replicas, no [store]", 3, None, '[session]\nstorage = "store"\n',
         ["up to 3 replicas but no [store]", 'storage = "store" without [store] (3 replicas)']),
        ("store, 1 replica + HPA max 1, no [store]", 1, 1, '[session]\nstorage = "store"\n',
         ['storage = "store" without [store] (HorizontalPodAutoscaler/app)']),
        ("store, 1 replica + HPA max 5, no [store]", 1, 5, '[session]\nstorage = "store"\n',
         ["up to 5 replicas but no [store]", 'storage = "store" without [store] (HorizontalPodAutoscaler/app)']),
        ("store, 3 replicas + HPA, [store]", 3, 10, '[session]\nstorage = "store"\n' + store_section, []),
        ("store, 1 replica, no HPA, no [store]", 1, None, '[session]\nstorage = "store"\n', []),
        ("cookie spelled out, 1 replica", 1, None, '[session]\nstorage = "cookie"\n', []),
        ("unknown storage", 1, None, '[session]\nstorage = "redis"\n', ["storage = 'redis' is unknown"]),
        ("unknown storage, with [store]", 2, None, '[session]\nstorage = "Store"\n' + store_section,
         ["storage = 'Store' is unknown"]),
    ]
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, replicas, hpa_max, toml_text, expected) in enumerate(cases):
            d = Path(tmp) / str(i)
            d.mkdir()
            manifests = (
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\n"
                f"spec:\n  replicas: {replicas}\n"
            )
            if hpa_max is not None:
                manifests += (
                    "---\napiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\n"
                    "metadata:\n  name: app\nspec:\n  scaleTargetRef:\n    apiVersion: apps/v1\n"
                    f"    kind: Deployment\n    name: app\n  minReplicas: 1\n  maxReplicas: {hpa_max}\n"
                )
            (d / "manifests.yaml").write_text(manifests)
            (d / "tollgate.toml").write_text(toml_text)
            docs = [x for x in yaml.safe_load_all((d / "manifests.yaml").read_text()) if x]
            dep = next(x for x in docs if x["kind"] == "Deployment")
            hpas = [x for x in docs if x["kind"] == "HorizontalPodAutoscaler"]
            config = tomllib.loads((d / "tollgate.toml").read_text())
            got = replica_store_problems(dep, hpas, config)
            ok = len(got) == len(expected) and all(
                any(want in problem for problem in got) for want in expected
            )
            if not ok:
                failures.append(f"self-test {name!r}: expected problems {expected}, got {got}")
    # An HPA for another Deployment does not count.
    other = {"kind": "HorizontalPodAutoscaler", "metadata": {"name": "other"},
             "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "other"}, "maxReplicas": 4}}
    dep = {"kind": "Deployment", "metadata": {"name": "app"}, "spec": {"replicas": 1}}
    got = replica_store_problems(dep, [other], {"session": {"storage": "store"}})
    if got:
        failures.append(f"self-test 'HPA of another Deployment': expected no problems, got {got}")
    for f in failures:
        fail("check_deploy.py", f)
    if not failures:
        print(f"ok   check_deploy.py: {len(cases) + 1} self-tests of the replica/store rules")
    return not failures


def run_tollgate_check(where, binary, toml_text, container, secret_mounts, secrets):
    """`tollgate check` on the rendered config, with the container's env and the Secret's files
    (example placeholders where the Secret is supplied outside kustomize)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config_file = tmp / "tollgate.toml"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE__")}
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
        # Put each mounted Secret's files in a temp dir and point the config there.
        example_keys = []
        for mount_path, secret_name in secret_mounts.items():
            d = tmp / secret_name
            d.mkdir()
            secret = next((s for s in secrets if s["metadata"]["name"] == secret_name), None)
            if secret:
                for name, data in secret.get("data", {}).items():
                    (d / name).write_bytes(base64.b64decode(data))
                    if name == "cookie_keys" and b"EXAMPLE" in base64.b64decode(data):
                        example_keys.append(d / name)
            else:
                # Supplied outside kustomize (e.g. kubectl create secret): example values.
                (d / "client_secret").write_text("placeholder-client-secret\n")
                (d / "cookie_keys").write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
                (d / "store_url").write_text("redis://127.0.0.1:6379/0\n")
            toml_text = toml_text.replace(f'"{mount_path}/', f'"{d}/')
            for k, v in env.items():
                if k.startswith("TOLLGATE__") and v.startswith(f"{mount_path}/"):
                    env[k] = f"{d}/" + v[len(mount_path) + 1 :]
        config_file.write_text(toml_text)
        check = [binary, "check", "--config", str(config_file)]
        if example_keys:
            # The example Secret's keys are published here: tollgate must refuse them with an
            # https public_url. Then check the rest of the config with a key of its own.
            r = subprocess.run(check, env=env, capture_output=True, text=True)
            if r.returncode == 0 or "is an example key" not in r.stderr:
                fail(where, f"tollgate check should refuse the example cookie key:\n{r.stdout}{r.stderr}")
            else:
                print(f"ok   {where}: tollgate check refuses the example cookie key")
            for path in example_keys:
                path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        r = subprocess.run(check, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            fail(where, f"tollgate check refuses the rendered config:\n{r.stdout}{r.stderr}")
        else:
            print(f"ok   {where}: tollgate check accepts the rendered config")


def has_kustomize():
    """kubectl with a kustomize that reads today's kustomization.yaml (v4+; Debian's kubectl
    1.20 embeds v2, which does not)."""
    try:
        out = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return False
    m = re.search(r"Kustomize Version: v(\d+)", out)
    return bool(m and int(m.group(1)) >= 4)


def validate_raw_files():
    """Without kustomize: validate each plain manifest file as written (no overlay applied)."""
    for path in sorted((ROOT / "deploy/kubernetes").rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.name.startswith("patch-"):
            continue
        validate_schemas(str(path.relative_to(ROOT)), path.read_text())


def check_forward_auth(binary):
    """deploy/forward-auth: the ingress-nginx Ingresses against the Kubernetes schemas, the
    Traefik and Envoy Gateway objects against their CRD schemas (check/validate.mjs), and
    tollgate.toml through `tollgate check` (its secret files supplied here)."""
    base = ROOT / "deploy/forward-auth"
    validate_schemas("deploy/forward-auth/ingress-nginx.yaml", (base / "ingress-nginx.yaml").read_text())
    r = subprocess.run(
        ["node", "validate.mjs", "../traefik.yaml", "../envoy-gateway.yaml"],
        cwd=base / "check", capture_output=True, text=True,
    )
    print(r.stdout.rstrip())
    if r.returncode != 0:
        fail("deploy/forward-auth", f"CRD schema validation:\n{r.stdout}{r.stderr}")
    with tempfile.TemporaryDirectory() as d:
        secret = Path(d) / "client_secret"
        secret.write_text("example-client-secret-0123456789abcdef\n")
        keys = Path(d) / "cookie_keys"
        keys.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        store = Path(d) / "store_url"
        store.write_text("redis://redis.shop.svc.cluster.local:6379/0\n")
        env = {
            **os.environ,
            "TOLLGATE__OIDC__CLIENT_SECRET_FILE": str(secret),
            "TOLLGATE__SESSION__KEYS_FILE": str(keys),
            "TOLLGATE__STORE__URL_FILE": str(store),
        }
        r = subprocess.run([binary, "check", "--config", str(base / "tollgate.toml")],
                           capture_output=True, text=True, env=env)
        if r.returncode != 0:
            fail("deploy/forward-auth/tollgate.toml", f"tollgate check refuses it:\n{r.stdout}{r.stderr}")
        else:
            print("ok   deploy/forward-auth/tollgate.toml: tollgate check accepts it")
    # nginx.conf is run by tests/forward_auth.rs, in front of real tollgate.


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    if sys.argv[1] == "--self-test":
        sys.exit(0 if self_test() else 1)
    binary = sys.argv[1]
    self_test()
    if not has_kustomize():
        print("WARNING: no kubectl with kustomize v4+ on this machine: overlays are NOT rendered;")
        print("WARNING: validating the plain manifest files only (install kubectl to check fully)")
        validate_raw_files()
    for path in KUSTOMIZATIONS if has_kustomize() else []:
        rendered, docs = render(path)
        print(f"ok   {path}: rendered {len(docs)} objects with kubectl kustomize")
        validate_schemas(path, rendered)
        check_tollgate_pod(path, docs, binary)

    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    for needle in [
        "cargo build --release --locked --bin tollgate",
        f'CMD ["--config", "{CONFIG_PATH}"]',
        'ENTRYPOINT ["/usr/local/bin/tollgate"]',
        "USER 65532:65532",
    ]:
        if needle not in dockerfile:
            fail("deploy/Dockerfile", f"expected {needle!r}")
    check_forward_auth(binary)

    # The image's example config must load.
    r = subprocess.run([binary, "check", "--config", str(ROOT / "conf/tollgate.toml")], capture_output=True, text=True)
    if r.returncode != 0:
        fail("conf/tollgate.toml", f"tollgate check refuses it:\n{r.stdout}{r.stderr}")

    if FAILURES:
        print(f"\n{len(FAILURES)} deployment check(s) failed")
        sys.exit(1)
    print("deployment checks passed")


if __name__ == "__main__":
    main()
