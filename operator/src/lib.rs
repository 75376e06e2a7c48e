//! edge-operator: turns EdgePipelines into agent DaemonSets.
