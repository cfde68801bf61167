#!/usr/bin/env bash
# What the network-fault tests need, made ready when missing: nftables from
# the system's packages, and a Unix user per instance (bookshelf-fault-1..4)
# whose traffic the tests' firewall rules match (meta skuid). Needs root.
#
#   scripts/fault-env.sh      prints BOOKSHELF_FAULT_USERS=bookshelf-fault-1,...
set -euo pipefail
users=(bookshelf-fault-1 bookshelf-fault-2 bookshelf-fault-3 bookshelf-fault-4)
if [ "$(id -u)" -ne 0 ]; then
    echo "the network-fault tests need root (nftables rules, users to run instances as)" >&2
    exit 1
fi
if ! command -v nft >/dev/null; then
    echo "installing nftables from the system's packages" >&2
    apt-get install -y -q nftables >&2 || { apt-get update -q >&2 && apt-get install -y -q nftables >&2; }
fi
nft list tables >/dev/null || { echo "nft cannot manage rules here (no CAP_NET_ADMIN?)" >&2; exit 1; }
for user in "${users[@]}"; do
    id -u "$user" >/dev/null 2>&1 ||
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
done
echo "BOOKSHELF_FAULT_USERS=$(IFS=,; echo "${users[*]}")"
