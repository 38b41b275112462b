"""Developer tools, apart from the daemon: ``make run`` (:mod:`.run`) with its file watcher
(:mod:`.watch`), and ``iot-bridge new`` (:mod:`.scaffold`).  Production runs ``iot-bridge run``
under systemd and imports none of this."""
