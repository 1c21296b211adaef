"""Test results: log parsers (osg-test, JUnit, TAP, exit code) and run classification."""
