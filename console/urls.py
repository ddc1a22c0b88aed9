from django.contrib import admin
from django.urls import path

from console import views
from console.api.api import api
from tracing.views import receive_traces

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("v1/traces", receive_traces, name="otlp-traces"),
    path("api/v1/", api.urls),
]
