"""The ``anysat`` command line: one entry point dispatching to model/, training/ and service/."""
