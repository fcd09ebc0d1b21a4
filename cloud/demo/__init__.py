"""``rpm-demo``: the whole system on one machine, with a story to watch (``run``).

``run`` orchestrates the processes, ``services`` the embedded database and broker and the child
processes, ``devices`` the simulated devices, ``story`` the week they live through, ``queries`` what
the demo seeds and reads, ``view`` the live terminal view.
"""
