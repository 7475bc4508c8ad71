"""User-uploaded datasets: a zip of class folders, extracted and checked by a worker, then usable
by experiments as an image-folder dataset (see `services.dataset_data_dir`)."""
