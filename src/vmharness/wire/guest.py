"""What the host and the guest agent agree on: disk labels, file names, console markers, the
kernel flag of a snapshot boot, format versions.

The agent (guest/vmharness-agent) runs on the guest's own Python with the standard library only
and is copied into the image, so it cannot import this module: it keeps its own copies of these
values under the same names, and a unit test reads them from its source and compares.
"""

from __future__ import annotations

# Filesystem labels the agent finds its two disks by (it reads them from the disks' first
# sectors: ext2 for the input disk, FAT for the output disk).
INPUT_LABEL = "VMHINPUT"
OUTPUT_LABEL = "VMHOUTPUT"

# On the input disk.
CONDITIONS_FILE = "conditions.toml"  # the run's conditions (wire/conditions.py)
CONDITIONS_VERSION = 1  # its `version`; the agent lists the versions it reads
SUITE_DIR = "suite"  # the test suite's files, when the spec names a folder

# On the output disk, written by the agent.
RESULT_FILE = "result.json"  # how the run went (phases, test exit code, error); always last
RESULT_VERSION = 1  # its `version`
AGENT_LOG = "agent.log"
TEST_LOG = "test.log"  # the test command's output
TEST_DIR = "test"  # VMHARNESS_RESULTS_DIR: where the test puts JUnit, TAP or osg-test files

# Warm-boot snapshots: booted with SNAPSHOT_FLAG on its kernel command line, the agent readies
# itself, says READY_MARKER on the serial console and waits for a run's disks; once they are
# hot-plugged into a restored copy it says DISKS_FOUND_MARKER.
SNAPSHOT_FLAG = "vmharness.snapshot"
READY_MARKER = "vmharness-agent: ready for a snapshot"
DISKS_FOUND_MARKER = "vmharness-agent: found the run's disks"
# With SNAPSHOT_FLAG, for VMs with a network: the agent starts udev and the network before it
# says READY_MARKER, so a restored run finds them up and only checks its address and clock.
NETWORK_FLAG = "vmharness.network"

# qemu user networking's address of the host, as the guest sees it (slirp forwards it to the
# host's 127.0.0.1). A package proxy there is the host's own: the agent then asks it for
# repositories at this address as the host's loopback, which is where the proxy finds them.
GUEST_HOST_ADDRESS = "10.0.2.2"
# The agent's line (in agent.log) when the package proxy cannot be used and apt goes direct.
PROXY_FALLBACK_NOTE = "package proxy not used: fetching from the mirrors directly"
