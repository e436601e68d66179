#!/usr/bin/env bash
# A wheel keeps its manylinux promise: its filename carries TAG (e.g. manylinux_2_28_x86_64), and
# auditwheel, reading the versioned symbols its binaries import (torch's own libraries and the
# CUDA runtime aside: they come with torch), finds them within TAG's policy. Prints the newest glibc, libstdc++ and
# C++ ABI versions each binary needs, measured with objdump -T. A strong import without a version
# other than Python's and torch's (its libraries have no symbol versions) fails too: bound to no
# glibc version at link time, it might not exist in glibc 2.28.
# Usage: manylinux_check.sh WHEEL TAG [PYTHON with auditwheel; default .venv/bin/python]
set -euo pipefail
wheel=${1:?usage: manylinux_check.sh WHEEL TAG [PYTHON]}
tag=${2:?usage: manylinux_check.sh WHEEL TAG [PYTHON]}
py=${3:-.venv/bin/python}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m zipfile -e "$wheel" "$scratch/tree"
for so in "$scratch"/tree/infomax_ext/*.so; do
  objdump -T "$so" | grep -oE '\((GLIBC|GLIBCXX|CXXABI)_[0-9.]+\)' | tr -d '()' | sort -u \
    > "$scratch/$(basename "$so").versions"
  unversioned=$(nm -D --undefined-only "$so" | awk '$1 == "U" && $2 !~ /@/ {print $2}' \
                | grep -vE '^(_?Py|aoti_torch_|torch_)' || true)
  if [ -n "$unversioned" ]; then
    echo "manylinux check FAILED: $(basename "$so") imports unversioned symbols:" $unversioned >&2
    exit 1
  fi
done
"$py" -m auditwheel show --json "$wheel" > "$scratch/show.json"
"$py" - "$wheel" "$tag" "$scratch" <<'PY'
import json, re, sys
from pathlib import Path

import auditwheel

wheel, tag, scratch = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
platforms = wheel.name[:-len(".whl")].split("-")[-1].split(".")
problems = [] if tag in platforms else [f"the filename's platform tags {platforms} lack {tag}"]
show = json.loads((scratch / "show.json").read_text())
policies = json.loads((Path(auditwheel.__file__).parent / "policy" / "manylinux-policy.json")
                      .read_text())
policy = next((p for p in policies if p["name"] == tag.rsplit("_x86_64", 1)[0]), None)
if policy is None:
    sys.exit(f"manylinux_check: auditwheel has no policy {tag}")
glibc = lambda t: tuple(map(int, re.match(r"manylinux_(\d+)_(\d+)", t).groups()))  # noqa: E731
if show["sym_tag"] == "linux_x86_64" or glibc(show["sym_tag"]) > glibc(tag):
    problems.append(f"auditwheel: the versioned symbols need {show['sym_tag']}, beyond {tag}")
others = [lib for lib in show["external_libs"]
          if not re.match(r"lib(torch|c10)\w*\.so|libcudart\.so", lib)]
if others:
    problems.append(f"libraries outside torch, its CUDA runtime and the manylinux policy: {others}")
allowed = policy["symbol_versions"]["x86_64"]
key = lambda v: tuple(int(x) for x in v.split("_")[-1].split(".") if x.isdigit())  # noqa: E731
for versions in sorted(scratch.glob("*.versions")):
    newest = {}
    for v in versions.read_text().split():
        family = v.split("_")[0]
        newest[family] = max(newest.get(family, v), v, key=key)
        if v.split("_", 1)[1] not in allowed.get(family, []):
            problems.append(f"{versions.stem} needs {v}, which {tag} does not allow")
    print(f"   {versions.stem}: newest needed " + ", ".join(newest[f] for f in sorted(newest))
          + f" (allowed up to {', '.join(f + '_' + max(allowed[f], key=key) for f in sorted(newest))})")
if problems:
    sys.exit("manylinux check FAILED for " + wheel.name + ":\n  " + "\n  ".join(problems))
print(f"manylinux check OK: {wheel.name} is {tag} (auditwheel: symbols need {show['sym_tag']})")
PY
