//! edge-agent: the node data plane.
