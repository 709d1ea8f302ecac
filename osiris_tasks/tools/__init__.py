"""The developer and operator tools on top of everything: the CLI, the demo, the tick
simulator, the runs table and export, an embedded Redis, and the reference sidecar."""
