"""``dustgate console``: the district's web console (central, next to the rule engine).

Layout (one module = one thing):

- ``config``   console.yaml model and loader (``file:line`` errors, ``dustgate check``)
- ``store``    SQLite: per-component migrations, users, sessions, audit log, rules versions
- ``auth``     roles, password hashing (argon2), login throttling (pure, clock-injected)
- ``live``     the board's state from retained status/state topics, events and telemetry (pure)
- ``mqttlink`` the console's MQTT session: feeds ``live``, publishes override requests
- ``sse``      fan-out of live updates to open pages (server-sent events)
- ``web``      the request context: sessions, CSRF, role checks, templates, page registry
- ``pages/``   one module per page group: auth, board, site, thresholds, users
- ``rulesedit`` round-trip edits of rules.yaml (ruamel.yaml), validation per field, diffs
- ``history``  InfluxDB reads (charts, events) and the preview replay
- ``charts``   server-side SVG charts (pure)
- ``app``      the Starlette application: middleware, routes of every page module
- ``cli``      ``dustgate console`` (serve) and ``dustgate console adduser``

Other packages add pages by listing a module in :data:`rules.console.app.PAGE_MODULES`
(it exposes ``routes(ctx) -> list[BaseRoute]`` and optionally ``NAV`` and ``MIGRATIONS``).
"""
