import requests
import time

API_KEY = "YOUR_API_KEY"
BASE_URL = "https://cerebraform.com" 

headers = {
    "Authorization": f"Bearer {API_KEY}",
    "Content-Type": "application/json"
}

# Step 1: Submit Task
payload = {
    "prompt": "a cinematic photo of a cat wearing a wizard hat",
    "aspect_ratio": "1:1"
}
submit_url = f"{BASE_URL}/ai/v1/to-image"
submit_res = requests.post(submit_url, json=payload, headers=headers)

if submit_res.status_code != 201:
    print(f"Error submitting task: {submit_res.text}")
    exit()

request_id = submit_res.json()['request_id']
print(f"Task submitted with request_id: {request_id}")

# Step 2: Poll for Status
status_url = f"{BASE_URL}/ai/v1/to-image/status/{request_id}"
while True:
    status_res = requests.get(status_url, headers=headers)
    status_data = status_res.json()
    status = status_data.get('status')
    
    print(f"Current status: {status_data.get('message', 'checking...')}")

    if status == 2: # Status 'done'
        break
    elif status == -1: # Status 'failed'
        print("Task failed. Check the message for details.")
        exit()
        
    time.sleep(5) # Wait 5 seconds before polling again

# Step 3: Fetch Result
result_url = f"{BASE_URL}/ai/v1/to-image/result/{request_id}"
result_res = requests.get(result_url, headers=headers)
result_data = result_res.json()

print("\nTask finished! Results:")
for result in result_data.get('results', []):
    print(result['url'])
