"""The ``crossmodal`` command: one verb per step of the user's flow."""
