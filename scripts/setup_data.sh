#!/usr/bin/env bash
# Installs the real data sets the lab uses (SPEC §9). All come from Debian packages;
# nothing is downloaded at run time. Without root/apt-get, prints the command to run.
set -uo pipefail
pkgs=(dataset-fashion-mnist)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || echo "initlab: could not install ${missing[*]}; the lab falls back to scikit-learn digits" >&2
else
  echo "initlab: for the full lab data run:  sudo apt-get install ${missing[*]}" >&2
fi
exit 0
