"""Minimal Django settings: no database, no apps, no middleware (so no CSRF
check either; the form view is csrf_exempt all the same, as a real one would be)."""

SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djangoproj.urls"
INSTALLED_APPS = []
MIDDLEWARE = []
DATABASES = {}
USE_TZ = True
