"""defectstream streaming layer: Faust app, agents, tracking, simulator, replay, SPC monitor, CLI."""
