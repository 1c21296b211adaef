"""Every kind of JSON document vmharness writes, with its format version.

Bump a version when a document changes in a way its readers cannot take (a field renamed,
removed or given another meaning); adding a field with a default needs no bump. Which dataclass
each kind holds is said here; the dataclass lives with the code that owns it.
"""

from __future__ import annotations

from .codec import Kind

# state.sqlite, table runs: run_json is a spec Run, result_json a RunResult; runs/<id>/run.json
# is an attempt's RunResult too. Rows and files written before the versions were recorded have
# the same shape: they are taken as version 1.
RUN = Kind("run", 1, unversioned=1)
RESULT = Kind("result", 1, unversioned=1)
# runs/<id>/work/job.json (condor.job.JobDescription) and outcome.json (vm.job.VMOutcome):
# between the submit side and the execute point. An outcome.json without a version is read as
# version 1, as it always was.
JOB = Kind("job.json", 1, limit=1 << 20)
OUTCOME = Kind("outcome.json", 1, unversioned=1, limit=64 << 10)
# condor/plan.json (condor.job.Plan): what a submit decided, for the DAG's nodes.
PLAN = Kind("plan.json", 1, limit=16 << 20)
# results.json (report.jsonout.ResultsFile): the public machine-readable report. Its version
# key is the public contract's, format_version.
RESULTS = Kind("results.json", 1, key="format_version")
# <cache root>/hosts.json (hosts.HostsFile): the execute-host deny-list, kept between matrices.
HOSTS = Kind("hosts.json", 1, limit=4 << 20)
