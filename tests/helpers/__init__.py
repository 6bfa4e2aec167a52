"""Test helpers shared by the test files: paths, generated data, runs, event readers and
independent reference implementations (oracles). Fixtures stay in conftest.py."""
