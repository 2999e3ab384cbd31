"""Where the course runs (lesson 00): device and precision, the full/offline profile and each
lesson's settings, the offline models, downloads ahead of time, and a lesson's claims."""
