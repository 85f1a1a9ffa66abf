#!/usr/bin/env bash
# Builds the release binaries of taskworker into dist/VERSION/:
#   taskworker_VERSION_OS_ARCH[.exe]         static (CGO_ENABLED=0), -trimpath, version stamped
#   taskworker_VERSION_OS_ARCH.sbom.txt      `go version -m`: Go version, build settings, every module
#   taskworker_VERSION_OS_ARCH.cdx.json      CycloneDX SBOM (cyclonedx-gomod), unless CYCLONEDX=0
#   SHA256SUMS                               sha256sum format over all of the above
#
#   scripts/release.sh [VERSION]   (default `git describe --tags --always --dirty`)
#
# DIST is the output root instead of dist/ (a relative DIST is relative to the repository root).
# TARGETS (space separated GOOS/GOARCH) picks the platforms; the default is every released one.
# CYCLONEDX: auto (default) writes the CycloneDX SBOM when cyclonedx-gomod is installed or can be
# installed with `go install` (one download, then offline); 0 never; 1 fails without it.
# Cutting a release: tag vX.Y.Z on a clean tree, then run this script (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."

if (($# > 0)); then
	version=$1
else
	version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
fi
if [[ ! $version =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]]; then
	echo "release.sh: version $version: use letters, digits and . _ + - only" >&2
	exit 2
fi
targets=${TARGETS:-linux/amd64 linux/arm64 darwin/arm64 windows/amd64}
cyclonedx=${CYCLONEDX:-auto}
cdx_module=github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod@v1.10.0

out=${DIST:-dist}/$version
rm -rf "$out"
mkdir -p "$out"

# cdx_tool prints the path of cyclonedx-gomod, installing it the first time; nothing if it cannot.
cdx_tool() {
	local gobin
	gobin=$(go env GOBIN)
	[[ -n $gobin ]] || gobin=$(go env GOPATH)/bin
	if command -v cyclonedx-gomod >/dev/null; then
		command -v cyclonedx-gomod
	elif [[ -x $gobin/cyclonedx-gomod ]]; then
		echo "$gobin/cyclonedx-gomod"
	elif go install "$cdx_module" >&2; then
		echo "$gobin/cyclonedx-gomod"
	fi
}
cdx=
if [[ $cyclonedx != 0 ]]; then
	cdx=$(cdx_tool || true)
	if [[ -z $cdx ]]; then
		if [[ $cyclonedx == 1 ]]; then
			echo "release.sh: CYCLONEDX=1 but cyclonedx-gomod is not installed and could not be (go install $cdx_module)" >&2
			exit 1
		fi
		echo "release.sh: cyclonedx-gomod unavailable: writing the go version -m SBOM only" >&2
	fi
fi

for t in $targets; do
	goos=${t%/*} goarch=${t#*/}
	name=taskworker_${version}_${goos}_${goarch}
	bin=$name
	[[ $goos == windows ]] && bin=$name.exe
	echo "building $out/$bin" >&2
	CGO_ENABLED=0 GOOS=$goos GOARCH=$goarch \
		go build -trimpath -ldflags "-s -w -X main.version=$version" -o "$out/$bin" .
	go version -m "$out/$bin" >"$out/$name.sbom.txt"
	if [[ -n $cdx ]]; then
		"$cdx" bin -json -version "$version" -output "$out/$name.cdx.json" "$out/$bin" 2>/dev/null
	fi
done

(
	cd "$out"
	files=(taskworker_*)
	if command -v sha256sum >/dev/null; then
		sha256sum "${files[@]}" >SHA256SUMS
	else
		shasum -a 256 "${files[@]}" >SHA256SUMS
	fi
)
echo "$out"
