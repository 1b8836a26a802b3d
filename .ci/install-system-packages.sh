#!/usr/bin/env bash
# Install the system packages the tests use: Orthanc with its DICOMweb plugin (the PACS of the integration test),
# dicom3tools (dciodvfy validates the SEGs and SRs we write), dcmtk (storescu/echoscu send to the DICOM node),
# openjph-tools (ojph_compress encodes the High-Throughput JPEG 2000 slices of the decoding tests),
# Chromium with a font for the browser test of the web page, and podman with debootstrap for `make image-test` (builds
# the image without a Docker engine; debootstrap makes its base image where no registry serves python:3.11-slim-bookworm).
# Idempotent: does nothing when all are present.
# The tests start their own Orthanc process on a free port, so the Debian service is kept from starting.
set -euo pipefail

PACKAGES=(orthanc orthanc-dicomweb dicom3tools dcmtk openjph-tools chromium fonts-liberation podman debootstrap)

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "system packages present: ${PACKAGES[*]}"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "skipping install of ${missing[*]}: not root (the tests that need them will be skipped)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "skipping install of ${missing[*]}: apt-get not found (the tests that need them will be skipped)" >&2
    exit 0
fi

# policy-rc.d exit code 101 tells invoke-rc.d not to start services during the install: Debian's orthanc would
# otherwise try to run its own daemon on port 8042, which the tests neither need nor want.
policy=/usr/sbin/policy-rc.d
created_policy=false
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=true
fi
cleanup() {
    if [ "$created_policy" = true ]; then
        rm -f "$policy"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"

# If an init system started the service anyway, stop it; ignore failures where there is no init system.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
    systemctl stop orthanc || true
    systemctl disable orthanc || true
fi
echo "installed: ${missing[*]}"
