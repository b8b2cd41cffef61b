#!/usr/bin/env bash
# Builds the Murmur Flowise nodes and installs them into an existing Flowise
# installation, where Flowise looks for nodes: it loads only
# node_modules/flowise-components/dist/nodes/**.js and
# node_modules/flowise-components/dist/credentials/*.credential.js.
#
#   integrations/flowise/install.sh FLOWISE_DIR
#
# FLOWISE_DIR is the folder whose node_modules holds flowise and
# flowise-components (where `npm install flowise` ran). Restart Flowise after.
# The nodes set no `author`, so Flowise shows them without
# SHOW_COMMUNITY_NODES=true.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
flowise_dir="${1:?usage: install.sh FLOWISE_DIR}"
components="$flowise_dir/node_modules/flowise-components"
if [ ! -f "$components/package.json" ] || [ ! -d "$components/dist/nodes" ]; then
  echo "install.sh: no Flowise here: $components/dist/nodes is missing" >&2
  exit 1
fi

cd "$here"
if [ ! -d node_modules/typescript ]; then
  npm ci --no-audit --no-fund
fi
npm run build

target="$components/dist/nodes/murmur"
rm -rf "$target"
mkdir -p "$target"
# Keep dist's layout (nodes/, lib/) so the nodes' relative requires hold.
cp -R dist/nodes dist/lib "$target/"
cp dist/credentials/MurmurApi.credential.js "$components/dist/credentials/"

# Runtime dependencies: ws (the job's live events), @langchain/core and zod
# (the agent tool). Flowise 3.1.4 ships all three; copy ws if a Flowise lacks
# it, and refuse if it lacks the other two (the tool must share Flowise's own
# @langchain/core).
missing=()
for dep in ws @langchain/core/tools zod/v3; do
  if ! node -e "require.resolve(process.argv[1], { paths: [process.argv[2]] })" "$dep" "$target/lib" 2>/dev/null; then
    missing+=("$dep")
  fi
done
for dep in "${missing[@]}"; do
  case "$dep" in
    ws)
      mkdir -p "$target/node_modules"
      cp -R node_modules/ws "$target/node_modules/ws"
      echo "install.sh: this Flowise has no ws; installed ours ($(node -p "require('./node_modules/ws/package.json').version"))"
      ;;
    *)
      echo "install.sh: this Flowise lacks $dep, which the Murmur Transcribe Tool needs" >&2
      exit 1
      ;;
  esac
done

# Load every node and the credential from where Flowise will, as its
# NodesPool does.
node -e '
const path = require("path"), fs = require("fs")
const target = process.argv[1], creds = process.argv[2]
for (const dir of fs.readdirSync(path.join(target, "nodes"))) {
  const file = path.join(target, "nodes", dir, dir + ".js")
  const node = new (require(file).nodeClass)()
  if (!fs.existsSync(path.join(target, "nodes", dir, node.icon))) throw new Error("icon missing for " + dir)
  console.log("install.sh: node " + node.name + " (" + node.label + ", category " + node.category + ")")
}
const cred = new (require(path.join(creds, "MurmurApi.credential.js")).credClass)()
console.log("install.sh: credential " + cred.name + " (" + cred.label + ")")
' "$target" "$components/dist/credentials"
echo "install.sh: installed into $target; restart Flowise to load the nodes"
