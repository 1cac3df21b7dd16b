"""An output under a cell that can be replaced later, from any thread, and still lands in that cell.

Under ipykernel 6, and under 7 for threads, a display message takes the parent header of whichever cell ran last,
so an update sent from the training thread would go to the wrong cell (ipykernel #1450, ipywidgets #4001). This
captures the parent while the cell runs and sends updates with it explicitly.
"""

from __future__ import annotations

from typing import Any


class CellOutput:
    def __init__(self, bundle: dict[str, Any] | None = None) -> None:
        from IPython import get_ipython
        from IPython.display import display

        self.handle = display(bundle or {"text/plain": ""}, raw=True, display_id=True)
        shell = get_ipython()
        publisher = getattr(shell, "display_pub", None)
        # Only a kernel's publisher has a session (and the socket and topic that IPython's DisplayPublisher type
        # lacks, hence Any); a terminal or test shell updates in place.
        self._publisher: Any = publisher if getattr(publisher, "session", None) is not None else None
        self._parent = dict(self._publisher.parent_header) if self._publisher is not None else None

    def update(self, bundle: dict[str, Any]) -> None:
        if self.handle is None:  # not under IPython: nothing was displayed
            return
        if self._parent is None:
            self.handle.update(bundle, raw=True)
            return
        pub = self._publisher
        content = {"data": bundle, "metadata": {}, "transient": {"display_id": self.handle.display_id}}
        # Sent with the parent of the cell that made the output, and again with the parent of the cell running
        # now if that differs: headless runners (nbclient) only take messages of the running cell, and front ends
        # find the output by its display_id either way. The kernel's iopub socket is safe from any thread.
        parents = [self._parent]
        current = dict(pub.parent_header or {})
        if current and current.get("msg_id") != self._parent.get("msg_id"):
            parents.append(current)
        for parent in parents:
            pub.session.send(pub.pub_socket, "update_display_data", content, parent=parent, ident=pub.topic)
