"""Use cases. Each public function is one use case in one database transaction; views call
these and map `ServiceError` to HTTP answers."""
