"""Every route of the console in one table: pages, the JSON API, the OTLP receiver, metrics."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from console import alert_pages, extensions, graph_pages, live_pages, pages, pattern_pages, trace_pages, trace_search_pages, views
from console.api.api import api
from tracing.views import receive_traces

urlpatterns = [
    path("", pages.overview, name="overview"),
    path("graph/", graph_pages.graph, name="graph"),
    path("deadletters/", pages.dead_letters, name="dead-letters"),
    path("deadletters/<int:dead_letter_id>/", pages.dead_letter, name="dead-letter"),
    path("sagas/", pages.sagas, name="sagas"),
    path("sagas/<uuid:saga_id>/", pages.saga, name="saga"),
    path("traces/", trace_search_pages.traces, name="traces"),
    path("traces/compare/", trace_pages.compare, name="trace-compare"),  # before the next: "compare" is no trace id
    path("traces/<str:trace_id>/", trace_pages.trace, name="trace"),
    path("messages/<str:message_id>/", pattern_pages.message, name="message"),
    path("queues/<str:name>/", pattern_pages.queue, name="queue"),
    path("types/<str:name>/", pattern_pages.message_type, name="message-type"),
    path("search/", pages.search, name="search"),
    path("audit/", pages.audit_log, name="audit"),
    path("alerts/", alert_pages.alerts, name="alerts"),
    path("workers/", live_pages.workers, name="workers"),
    path("tasks/", live_pages.tasks, name="tasks"),
    path("login/", auth_views.LoginView.as_view(template_name="console/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("v1/traces", receive_traces, name="otlp-traces"),
    path("api/v1/", api.urls),
    *extensions.urls(),
]
