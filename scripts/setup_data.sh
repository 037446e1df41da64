#!/usr/bin/env bash
# Installs the real data sets the lab uses. All come from Debian packages;
# nothing is downloaded at run time. Without root/apt-get, prints the command to run.
set -uo pipefail
pkgs=(dataset-fashion-mnist diatheke sword-text-kjv sword-text-sparv)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || echo "initlab: could not install ${missing[*]}; the lab falls back to scikit-learn digits" >&2
  else
    echo "initlab: for the full lab data run:  sudo apt-get install ${missing[*]}" >&2
  fi
fi
# The English-Spanish Bible corpus of the translation lab: exported with diatheke, aligned and
# tokenized once, cached under $INITLAB_DATA or ~/.cache/initlab (a few seconds; skipped if built).
py="${INITLAB_PYTHON:-.venv/bin/python}"
if command -v diatheke >/dev/null && [ -x "$py" ]; then
  "$py" -m initlab.lab.translation.data || echo "initlab: could not build the Bible corpus" >&2
fi
exit 0
