from django.urls import path

from tooling.lab import views

urlpatterns = [path("lab/", views.lab, name="lab")]
