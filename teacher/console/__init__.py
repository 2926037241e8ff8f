"""`gemma-teacher console` (in progress): the web page for review, fleet and releases. So far: ``auth`` (exposure check, signed sessions, CSRF); the pages are not built yet."""
