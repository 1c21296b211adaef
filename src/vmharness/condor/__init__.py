"""HTCondor: submit, the DAG, its nodes, event logs and the execute side."""
